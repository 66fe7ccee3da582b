"""Relay: events/s from a context's log onto its stream, beside raw nats-py publishing of
the very same messages (subjects, bodies, headers), in one run on one server.

    python -m benchmarks.relay [--events N]

The raw publishers start from messages already built in memory. So does the relay in the
context's process: each save hands it the messages built from the events just stored
(the translation is paid by the save; the caption says how much saving slowed down). A
relay catching up from the log (after a restart, or run on its own) also reads and
decodes every event. Ratios are against the fastest raw publisher: core publishes chained
by ``Nats-Expected-Last-Sequence`` with one acknowledgement in 200 (the relay publishes
the same way); one acknowledgement a message is the next row.

Two rows relay events that carry a trace (each save of a thousand orders in a trace of
its own, as an HTTP command's are: see :mod:`toolkit.tracing`), in the context's process:
with spans off (``TOOLKIT_TRACING=off``: the envelopes carry the trace all the same) and
on (OpenTelemetry's SDK, a span for each page published, linked to the spans its events
name, each once, exported in batches to an exporter that drops them: the SDK's own cost,
no network). A page here holds one save's events, so it links one or two spans; events
of a trace each (a command saving one order) would make it link up to 128, about 1 µs
an event more (docs/tracing.md).

Two more rows time the relay's own work without publishing, whole and the part of it that
no reading of the log can save (translating and encoding). They explain the catch-up
figure: in one Python process its own work and publishing add up (1/relay ~ 1/own work +
1/publishing; the relay's publishing costs less than the raw publishers' nats-py
``publish``, since it writes its protocol frames itself: see toolkit.write.publishing),
and on 2 cores the second core is taken by nats-server, so a worker process building
messages beside the publisher would have nowhere to run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path
from typing import Any
from uuid import UUID

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from rich.console import Console
from rich.table import Table

from contexts.sales import Order, OrderLine, Sales
from toolkit import Relay, StreamSpec, ensure_stream, tracing
from toolkit.nats.connection import connect
from toolkit.nats.embedded import EmbeddedServer
from toolkit.wire import EXPECTED_LAST_SEQUENCE
from toolkit.write.causation import Causation, caused
from toolkit.write.outbox import Outbox
from toolkit.write.published import OutgoingMessage

Messages = list[OutgoingMessage]


def fill_log(sales: Sales, orders: int, *, traced: bool = False) -> None:
    """Ten customers, then ``orders`` orders a thousand to a save (:func:`new_orders`).
    ``traced``: each save in a trace of its own, as a command's."""
    with _command(traced):
        customers = [sales.register_customer(f"C{i}", f"c{i}@example.com") for i in range(10)]
    for start in range(0, orders, 1000):
        with _command(traced):
            sales.save(*new_orders(customers, start, min(1000, orders - start)))


def new_orders(customers: list[UUID], start: int, count: int) -> list[Order]:
    """Orders ``start`` to ``start + count`` of a filled log, the customers' in turn: a
    line of tea each; every fifth order also gets a private note."""
    line = OrderLine(sku="tea", quantity=2, unit_price=Decimal("1.25"))
    batch = []
    for i in range(start, start + count):
        order = Order(customer_id=customers[i % len(customers)], lines=[line])
        if i % 5 == 0:
            order.add_note(text="private")
        batch.append(order)
    return batch


def _command(traced: bool) -> contextlib.AbstractContextManager[None]:
    """A new trace for the saves inside, as an HTTP command's (when ``traced``)."""
    if not traced:
        return contextlib.nullcontext()
    trace = tracing.Trace(tracing.new_traceparent(), "bench=1")
    return caused(Causation(f"http:{tracing.new_span_id()}", trace.trace_id, *trace))


@contextlib.asynccontextmanager
async def sales_stream(folder: Path, orders: int) -> AsyncIterator[tuple[Client, int]]:
    """Sales' stream of ``orders`` orders (and ten customers) on an embedded server of
    its own: a client of it, and the stream's head. What consumers race over."""
    sales = Sales(data_dir=folder / "sales")
    try:
        fill_log(sales, orders)
        with EmbeddedServer(folder / "nats") as server:
            nc = await connect(server.url)
            try:
                yield nc, (await Relay(sales, nc).run(until_head=True)).stream_sequence
            finally:
                await nc.close()
    finally:
        sales.close()


def built_messages(sales: Sales) -> Messages:
    """The messages the relay publishes, built once by its outbox, for the raw publishers."""
    head = sales.recorder.max_notification_id() or 0
    return Outbox(sales).read(0, head, head + 1).messages


async def js_publish(nc: Client, messages: Messages) -> int:
    js = nc.jetstream()
    for m in messages:
        await js.publish(m.subject, m.body, headers=m.headers)
    return len(messages)


async def js_publish_async(nc: Client, messages: Messages) -> int:
    js = nc.jetstream()
    for m in messages:
        await js.publish_async(m.subject, m.body, headers=m.headers)
    await js.publish_async_completed()
    return len(messages)


async def core_windowed(nc: Client, messages: Messages, window: int = 2000) -> int:
    """Core publishes with a reply inbox each, at most ``window`` acknowledgements pending."""
    inbox = nc.new_inbox()
    acked = 0
    arrived = asyncio.Event()

    async def on_ack(_: Msg) -> None:
        nonlocal acked
        acked += 1
        arrived.set()

    sub = await nc.subscribe(f"{inbox}.*", cb=on_ack)
    for i, m in enumerate(messages):
        while i - acked >= window:
            arrived.clear()
            await arrived.wait()
        await nc.publish(m.subject, m.body, reply=f"{inbox}.{i}", headers=m.headers)
    while acked < len(messages):
        arrived.clear()
        await arrived.wait()
    await sub.unsubscribe()
    return len(messages)


async def core_chained(
    nc: Client, messages: Messages, ack_every: int = 200, window: int = 10_000
) -> int:
    """The fastest publisher found: each message chained to the one before it by
    ``Nats-Expected-Last-Sequence``, so an acknowledgement vouches for every message
    before it and only every ``ack_every``-th message (and the last) asks for one; at
    most ``window`` messages unconfirmed. Assumes an empty stream."""
    inbox = nc.new_inbox()
    confirmed = 0
    refusals: list[bytes] = []
    arrived = asyncio.Event()

    async def on_ack(msg: Msg) -> None:
        nonlocal confirmed
        if b'"error"' in msg.data:
            refusals.append(msg.data)
        confirmed = int(msg.subject.rpartition(".")[2])
        arrived.set()

    sub = await nc.subscribe(f"{inbox}.*", cb=on_ack)
    last = len(messages) - 1
    for i, m in enumerate(messages):
        while i - confirmed >= window:
            arrived.clear()
            await arrived.wait()
        headers = {**m.headers, EXPECTED_LAST_SEQUENCE: str(i)}
        if i % ack_every == ack_every - 1 or i == last:
            await nc.publish(m.subject, m.body, reply=f"{inbox}.{i + 1}", headers=headers)
            await asyncio.sleep(0)  # let nats-py's flusher write while the next run is built
        else:
            await nc.publish(m.subject, m.body, headers=headers)
    while confirmed < len(messages) and not refusals:
        arrived.clear()
        await arrived.wait()
    await sub.unsubscribe()
    if refusals:
        raise RuntimeError(f"the stream refused a chained publish: {refusals[0]!r}")
    return len(messages)


def build_only(relay: Relay) -> int:
    """The relay's own work without publishing: read the log in the relay's pages,
    decode each published event and build its message. Not a publisher: it shows how
    much of the relay's time is spent before a message reaches nats-py."""
    head = relay.context.recorder.max_notification_id() or 0
    position, built = 0, 0
    while position < head:
        page = relay.outbox.read(position, head, relay.batch_size)
        built += len(page.messages)
        position = page.position
    return built


def translate_only(sales: Sales) -> float:
    """Events/s of the part of the relay's work no reading of the log can save:
    translating decoded domain events and encoding their envelopes."""
    language = sales.published_language
    decoded = [
        (mapping, sales.mapper.to_domain_event(n), n.id)
        for n in sales.recorder.select_notifications(start=None, limit=10**9)
        if (mapping := language.mapping(n.topic)) is not None
    ]
    started = time.perf_counter()
    for mapping, event, position in decoded:
        language.message(mapping, event, position)  # type: ignore[arg-type]
    return len(decoded) / (time.perf_counter() - started)


Publisher = Callable[[Client, Messages], Awaitable[int]]
BASELINE = "raw core publish, chained acks, one in 200 (baseline)"
WINDOWED = "raw core publish, an ack each, 2,000 in flight"
RELAY = "toolkit Relay in the context's process (saves hand over their messages)"
CATCH_UP = "toolkit Relay catching up from the SQLite log (or run on its own)"
BUILD_ONLY = "its own work catching up: read, decode, translate, encode (no publishing)"
TRANSLATE_ONLY = "translate and encode alone (what a save pays to hand over; no publishing)"
TRACED_OFF = "toolkit Relay in the context's process, events carrying a trace, spans off"
TRACED_ON = "the same with OpenTelemetry spans on (SDK, a span a page linking its saves' spans)"


@dataclass
class Measured:
    rates: dict[str, float]
    """Events/s of each publisher, and of the relay's own work."""
    saving: dict[str, float]
    """Seconds the log took to fill, with and without a relay taking hand-offs."""
    published: int

    def save_cost(self) -> float:
        """µs a published event that handing over added to saving."""
        return (self.saving[HANDING] - self.saving[PLAIN]) / self.published * 1e6


PLAIN = "no relay in the process"
HANDING = "relay in the process"


async def measure(events: int, folder: Path) -> Measured:
    sales = Sales(data_dir=folder / "log")
    live = Sales(data_dir=folder / "live")
    try:
        saving = {PLAIN: _timed_fill(sales, events)}
        messages = built_messages(sales)
        contenders: dict[str, Publisher] = {
            "js.publish, one await each": lambda nc, ms: js_publish(
                nc, ms[: max(1, len(ms) // 10)]
            ),
            "js.publish_async": js_publish_async,
            WINDOWED: core_windowed,
            BASELINE: core_chained,
        }
        rates: dict[str, float] = {}
        with EmbeddedServer(folder / "nats") as server:
            nc = await connect(server.url)
            try:
                for name, publish in contenders.items():
                    await _fresh_stream(nc)
                    started = time.perf_counter()
                    count = await publish(nc, messages)
                    rates[name] = count / (time.perf_counter() - started)
                await _fresh_stream(nc)
                # The relay is woken by each save and keeps up; here the saves all come
                # first, so the hand-off is sized to hold them all.
                relay = Relay(live, nc, handoff_limit=2 * len(messages) + 1000)
                with relay.outbox.handing_over():
                    saving[HANDING] = _timed_fill(live, events)
                    rates[RELAY] = await _relay_rate(relay, len(messages))
                assert relay.outbox.pages_read == 0, "every page was handed over"
                rates[TRACED_OFF] = await _traced_rate(nc, folder / "off", events, spans=False)
                rates[TRACED_ON] = await _traced_rate(nc, folder / "on", events, spans=True)
                await _fresh_stream(nc)
                relay = Relay(sales, nc)
                started = time.perf_counter()
                built = build_only(relay)
                rates[BUILD_ONLY] = built / (time.perf_counter() - started)
                rates[TRANSLATE_ONLY] = translate_only(sales)
                rates[CATCH_UP] = await _relay_rate(relay, len(messages))
            finally:
                await nc.close()
        return Measured(rates, saving, len(messages))
    finally:
        sales.close()
        live.close()


async def _traced_rate(nc: Client, folder: Path, events: int, *, spans: bool) -> float:
    """The in-process relay's rate over events that carry a trace, spans on or off."""
    provider = _span_provider() if spans else None
    tracing.configure(provider, enabled=spans)
    sales = Sales(data_dir=folder)
    try:
        await _fresh_stream(nc)
        relay = Relay(sales, nc, handoff_limit=4 * events + 1000)
        with relay.outbox.handing_over():
            fill_log(sales, events, traced=True)
            expected = sales.recorder.max_notification_id() or 0
            expected -= len(range(0, events, 5))  # the notes stay private
            return await _relay_rate(relay, expected)
    finally:
        sales.close()
        tracing.configure()
        if provider is not None:
            provider.shutdown()


def _span_provider() -> Any:
    """OpenTelemetry's SDK, exporting in batches to an exporter that drops the spans."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Dropping(SpanExporter):
        def export(self, spans: object) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropping()))
    return provider


async def _relay_rate(relay: Relay, expected: int) -> float:
    started = time.perf_counter()
    stats = await relay.run(until_head=True)
    rate = stats.published / (time.perf_counter() - started)
    assert stats.published == expected
    return rate


def _timed_fill(sales: Sales, events: int) -> float:
    started = time.perf_counter()
    fill_log(sales, events)
    return time.perf_counter() - started


async def _fresh_stream(nc: Client) -> None:
    """An empty ``sales`` stream. A publisher measured before may still have messages in
    flight when it is deleted, which then land in the new one: the relay would rightly
    refuse a stream that holds another log's events, so the stream is made again until
    it stays empty."""
    js = nc.jetstream()
    for _ in range(50):
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream("sales")
        await ensure_stream(js, StreamSpec("sales"))
        await nc.flush()
        await asyncio.sleep(0.05)  # (late messages of another connection: no event to await)
        if not (await js.stream_info("sales")).state.messages:
            return
    raise RuntimeError("the sales stream does not stay empty: something publishes to it")


def report(events: int, measured: Measured) -> Table:
    rates = measured.rates
    baseline = rates[BASELINE]
    table = Table(title=f"publishing {events:,} orders' events onto JetStream")
    table.add_column("publisher")
    table.add_column("events/s", justify="right")
    table.add_column("ratio to baseline", justify="right")
    for name, rate in rates.items():
        table.add_row(name, f"{rate:,.0f}", f"{rate / baseline:.2f}")
    table.caption = (
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, nats-py {version('nats-py')}; "
        "js.publish measured over a tenth of the events. Filling the log took "
        f"{measured.saving[PLAIN]:.2f} s with {PLAIN} and {measured.saving[HANDING]:.2f} s "
        f"with a {HANDING} ({measured.save_cost():+.1f} µs a published event)"
    )
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.relay")
    parser.add_argument("--events", type=int, default=50_000, help="orders in the log")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as folder:
        measured = asyncio.run(measure(args.events, Path(folder)))
    Console().print(report(args.events, measured))


if __name__ == "__main__":
    main()
