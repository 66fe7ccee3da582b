"""End-to-end latency of the policy chain sales -> shipping -> sales at fixed offered rates,
beside the same number of raw JetStream hops at the same rates, in one run on one server.

    python -m benchmarks.chain [--rates 50 100 200] [--seconds 10]

The chain is the example system's longest that flows back to sales:

1. the command process places orders with ``Sales.place_order`` on a schedule (``rate`` a
   second, open loop), its ``Relay`` in the same process, woken by each save, carrying
   ``sales.OrderPlaced`` onto sales' stream;
2. shipping's process (as ``toolkit serve --policies ship-orders`` runs it for shipping):
   the ``ship-orders`` policy's ``Reactor``, reacting in a worker thread, requests a
   shipment for each order in shipping's log; shipping dispatches a shipment on a command
   (an operator's, over HTTP), so the benchmark runs ``Shipping.dispatch_shipment`` as
   soon as the request is committed, on the process's event loop; shipping's ``Relay``
   there, woken by those saves, carries ``shipping.ShipmentDispatched`` onto shipping's
   stream;
3. the ``mark-shipped`` policy's ``Reactor`` marks the order shipped in sales' log, run
   two ways that take turns at each rate: in a process of its own (``toolkit react
   mark-shipped``; it and the command process then both write sales' SQLite file), and in
   the command process on the same context, reacting in a worker thread (as ``toolkit
   serve --policies mark-shipped`` runs it; the process's writers take turns on a lock).

An order's latency runs from ``place_order`` returning to the commit of the transaction
that stored its ``Order.Shipped`` in sales' log. Each step is noted too: each commit by
the context's save listeners (they run right after it), and when each reactor hands a
message to the policy's runner. Every process reads the same monotonic clock.

The baseline is two raw hops in the same three-process shape: the command process
publishes a message of about an ``OrderPlaced``'s size with ``js.publish`` (awaiting
JetStream's acknowledgement, file storage); a second process consumes it with a nats-py
ordered push consumer and publishes it on (awaited) to a second stream; a third consumes
that one. Latency is from the first publish call to the last consumer's callback. The
contenders take turns at each rate: the chain twice, then the raw hops.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import orjson
from eventsourcing.persistence import Recording
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy, StreamConfig
from rich.console import Console
from rich.table import Table

from benchmarks.latency import ChildProcess, on_schedule
from contexts.sales import Sales
from contexts.sales.domain import Order
from contexts.sales.policy import MarkDispatchedOrdersShipped
from contexts.shipping import Shipment, Shipping
from contexts.shipping.policy import ShipPlacedOrders
from toolkit import BoundedContext, Relay
from toolkit.nats.connection import connect
from toolkit.nats.embedded import EmbeddedServer
from toolkit.nats.streams import StreamSpec, ensure_stream
from toolkit.react.deadletters import PolicyDeadLetters
from toolkit.react.policy import Policy
from toolkit.react.reactor import Reactor
from toolkit.react.runner import Counts, PolicyRunner
from toolkit.read.reader import StreamMessage
from toolkit.wire.subjects import aggregate_token

TOOLKIT = "toolkit, mark-shipped in a process of its own"
SERVED = "toolkit, mark-shipped in the command's process"
RAW = "raw: two JetStream hops (baseline)"
SHORT = {TOOLKIT: "own process", SERVED: "command's process", RAW: "raw"}
WHERE = {TOOLKIT: "in a process of its own", SERVED: "in the command's process"}
CHAIN_STEPS = {
    "ship-orders has it": "placed -> ship-orders' reactor has it (sales' relay, JetStream)",
    "requested": "-> shipment requested (the reaction's transaction in shipping's log)",
    "dispatched": "-> dispatched (the dispatch command's transaction)",
    "mark-shipped has it": "-> mark-shipped's reactor has it (shipping's relay, JetStream)",
    "shipped": "-> order shipped (the reaction's transaction in sales' log)",
}
STEPS = {
    TOOLKIT: CHAIN_STEPS,
    SERVED: CHAIN_STEPS,
    RAW: {
        "first": "first hop: publish -> consume",
        "last": "second hop: publish on -> consume",
    },
}
"""Each contender's steps, in order: what the processes report them as, and what they are."""
PERCENTILES = (0.5, 0.9, 0.99, 1.0)
"""p50, p90, p99 and the maximum."""
LINES = [{"sku": "tea", "quantity": 2, "unit_price": Decimal("1.25")}]
HOPS = ("hop1", "hop2")
CARRIER = "bench"
WARM_UP = 20
ROOT = Path(__file__).resolve().parent.parent
C = TypeVar("C", bound=BoundedContext[Any])


@dataclass
class Chain:
    """One contender at one offered rate."""

    offered: float
    achieved: float
    """Orders (or messages) a second actually issued."""
    samples: list[float]
    """Seconds from issue to the last step, sorted."""
    steps: list[list[float]]
    """Seconds each step took (from the one before), each sorted."""
    unfinished: int
    """Issued but not through the whole chain when the run ended."""

    def percentile(self, q: float, step: int | None = None) -> float:
        values = self.samples if step is None else self.steps[step]
        if not values:
            return math.nan
        return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


Seen = dict[str, dict[str, float]]
"""Per step a process saw: when each id passed it (monotonic seconds)."""
Results = dict[int, dict[str, Chain]]
"""Per offered rate: each contender's latencies."""


def _sales(folder: Path) -> Sales:
    """Sales' context on its log, the one SQLite file every process of sales writes."""
    return Sales(data_dir=folder / "sales")


class _Noting(PolicyRunner[C]):
    """A runner noting when the reactor handed it each message of ``type_`` (first)."""

    def __init__(self, policy: Policy[C], context: C, type_: str, seen: dict[str, float]) -> None:
        super().__init__(policy, context)
        self.suffix = f".{type_}"
        self.seen = seen

    def apply(self, messages: Sequence[StreamMessage], counts: Counts | None = None) -> Counts:
        now = time.monotonic()
        for message in messages:
            if message.subject.endswith(self.suffix):
                self.seen.setdefault(aggregate_token(message.subject), now)
        return super().apply(messages, counts)


async def _ship(url: str, folder: Path, seen: Seen, stop: asyncio.Event) -> None:
    """Shipping's process, as ``toolkit serve --policies ship-orders`` runs it: its policy
    reacting in a worker thread, its relay, and the dispatch of each shipment requested
    (the command an operator would send over HTTP) on the event loop."""
    nc = await connect(url)
    shipping = Shipping(data_dir=folder / "shipping")
    loop = asyncio.get_running_loop()
    requested: asyncio.Queue[UUID] = asyncio.Queue()
    has_it, requests, dispatches = (seen[k] for k in list(STEPS[TOOLKIT])[:3])

    def noted(recordings: list[Recording[Any]]) -> None:
        now = time.monotonic()
        for recording in recordings:
            event = recording.domain_event
            if isinstance(event, Shipment.Requested):
                requests[str(event.originator_id)] = now
                loop.call_soon_threadsafe(requested.put_nowait, event.originator_id)
            elif isinstance(event, Shipment.Dispatched):
                dispatches[str(event.originator_id)] = now

    async def dispatch() -> None:
        while True:
            shipping.dispatch_shipment(await requested.get(), CARRIER)

    shipping.on_saved(noted)
    try:
        with PolicyDeadLetters(folder / "ship-orders-dead-letters.sqlite") as dead_letters:
            runner = _Noting(ShipPlacedOrders(), shipping, "OrderPlaced", has_it)
            reactor = Reactor(runner, dead_letters, nc, threaded=True)
            relaying = asyncio.create_task(Relay(shipping, nc).run(stop))
            dispatching = asyncio.create_task(dispatch())
            print("ready", flush=True)
            await reactor.run(stop)
            dispatching.cancel()
            await relaying
    finally:
        shipping.close()
        await nc.close()


def _marking(sales: Sales, seen: Seen) -> Callable[[], _Noting[Sales]]:
    """Note when each order is marked shipped in sales' log (from saves through ``sales``);
    returns a maker of mark-shipped's runners noting when their reactor has each message."""
    has_it, shipped = (seen[k] for k in list(STEPS[TOOLKIT])[3:])

    def noted(recordings: list[Recording[Any]]) -> None:
        now = time.monotonic()
        for recording in recordings:
            if isinstance(recording.domain_event, Order.Shipped):
                shipped[str(recording.domain_event.originator_id)] = now

    sales.on_saved(noted)
    return lambda: _Noting(MarkDispatchedOrdersShipped(), sales, "ShipmentDispatched", has_it)


async def _mark(url: str, folder: Path, seen: Seen, stop: asyncio.Event) -> None:
    """Sales' policy process (``toolkit react mark-shipped``): marks orders shipped in
    sales' log. SIGUSR1 pauses it while the command's process runs the policy (it says
    ``paused``), SIGUSR2 resumes it (``resumed``), from the tracking records."""
    nc = await connect(url)
    sales = _sales(folder)
    runner = _marking(sales, seen)
    loop = asyncio.get_running_loop()
    pause, resume = asyncio.Event(), asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, pause.set)
    loop.add_signal_handler(signal.SIGUSR2, resume.set)
    try:
        with PolicyDeadLetters(folder / "mark-shipped-dead-letters.sqlite") as dead_letters:
            print("ready", flush=True)
            while not stop.is_set():
                turn = asyncio.Event()
                ending = asyncio.create_task(_either(stop, pause, then=turn))
                await Reactor(runner(), dead_letters, nc).run(turn)
                ending.cancel()
                if pause.is_set():
                    pause.clear()
                    print("paused", flush=True)
                    await _either(resume, stop)
                    resume.clear()
                    print("resumed", flush=True)
    finally:
        sales.close()
        await nc.close()


async def _either(*events: asyncio.Event, then: asyncio.Event | None = None) -> None:
    """Wait until one of ``events`` is set; then set ``then``."""
    waits = [asyncio.create_task(e.wait()) for e in events]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()
    if then is not None:
        then.set()


def _consumer(forward: bool) -> Callable[[str, Path, Seen, asyncio.Event], Awaitable[None]]:
    """A raw hop's consumer: of the first stream (publishing each message on to the second:
    ``forward``) or of the second."""
    stream, onward = (HOPS[0], HOPS[1]) if forward else (HOPS[1], None)
    step = list(STEPS[RAW])[0 if forward else 1]

    async def consume(url: str, _: Path, seen: Seen, stop: asyncio.Event) -> None:
        nc = await connect(url)
        js = nc.jetstream()

        async def on_message(msg: Msg) -> None:
            key = msg.subject.split(".", 1)[1]
            seen[step][key] = time.monotonic()
            if onward is not None:
                await js.publish(f"{onward}.{key}", msg.data)

        try:
            sub = await js.subscribe(
                f"{stream}.>",
                stream=stream,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.NEW,
                cb=on_message,
            )
            print("ready", flush=True)
            await stop.wait()
            await sub.unsubscribe()
        finally:
            await nc.close()

    return consume


CHILDREN = {
    "ship": _ship,
    "mark": _mark,
    "forward": _consumer(forward=True),
    "last": _consumer(forward=False),
}


def child(kind: str, url: str, folder: str) -> None:
    """One process of a contender: says ``ready`` once it follows its stream, and on
    SIGTERM prints, as JSON, when it saw each id pass its steps."""
    seen: Seen = {step: {} for steps in STEPS.values() for step in steps}

    async def run() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await CHILDREN[kind](url, Path(folder), seen, stop)

    asyncio.run(run())
    print(orjson.dumps({step: ids for step, ids in seen.items() if ids}).decode(), flush=True)


def _chain(name: str, offered: int, achieved: float, sent: dict[str, float], seen: Seen) -> Chain:
    """Contender ``name``'s latencies of the ids ``sent`` (when each was issued), from
    when its processes ``seen`` them pass each step."""
    samples: list[float] = []
    steps: list[list[float]] = [[] for _ in STEPS[name]]
    for key, at in sent.items():
        times = [at, *(seen.get(step, {}).get(key, math.nan) for step in STEPS[name])]
        if not any(math.isnan(t) for t in times):
            samples.append(times[-1] - at)
            for step, (before, after) in zip(steps, itertools.pairwise(times), strict=True):
                step.append(after - before)
    unfinished = len(sent) - len(samples)
    return Chain(offered, achieved, sorted(samples), [sorted(s) for s in steps], unfinished)


async def _until(done: Callable[[], Awaitable[bool]], within: float) -> bool:
    """Poll ``done`` until it holds (True) or ``within`` seconds passed (False)."""
    deadline = time.monotonic() + within
    while not await done():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)  # neither the log nor the stream has an event to wait on
    return True


def _all_shipped(sales: Sales, orders: list[UUID]) -> Callable[[], Awaitable[bool]]:
    """Whether every one of ``orders`` is marked shipped in sales' log. Asked from the
    newest back, one read while the newest is on its way: reading them all each time
    would hold up the event loop, and the relay on it, for tens of milliseconds."""
    remaining = list(orders)

    async def done() -> bool:
        while remaining and sales.get_order(remaining[-1]).status == "shipped":
            remaining.pop()
        return not remaining

    return done


async def measure_async(rates: list[int], seconds: float, folder: Path) -> Results:
    rates = list(dict.fromkeys(rates))
    sales = _sales(folder)
    customers = [sales.register_customer(f"C{i}", f"c{i}@example.com") for i in range(10)]
    served: Seen = {step: {} for step in STEPS[SERVED]}
    marking = _marking(sales, served)
    body = b"x" * 450  # about an OrderPlaced envelope
    issued: dict[tuple[int, str], dict[str, float]] = {
        (rate, name): {} for rate in rates for name in STEPS
    }
    achieved: dict[tuple[int, str], float] = {}
    try:
        with (
            EmbeddedServer(folder / "nats") as server,
            PolicyDeadLetters(folder / "served-dead-letters.sqlite") as dead_letters,
        ):
            nc = await connect(server.url)
            js = nc.jetstream()
            for context in ("sales", "shipping"):  # the reactors find them at once
                await ensure_stream(js, StreamSpec(context))
            for stream in HOPS:
                await js.add_stream(StreamConfig(name=stream, subjects=[f"{stream}.>"]))
            stop_relay = asyncio.Event()
            relaying = asyncio.create_task(Relay(sales, nc).run(stop_relay))
            processes = {
                kind: ChildProcess("benchmarks.chain", kind, server.url, folder)
                for kind in CHILDREN
            }
            try:
                await asyncio.gather(*(p.start() for p in processes.values()))
                warm = [sales.place_order(customers[i % 10], LINES) for i in range(WARM_UP)]
                if not await _until(_all_shipped(sales, warm), 60):
                    raise RuntimeError("the chain did not carry the warm-up orders through")
                hopped = 0
                for rate in rates:

                    async def orders(name: str, rate: int = rate) -> None:
                        sent = issued[rate, name]

                        async def place(i: int) -> None:
                            order = sales.place_order(customers[i % 10], LINES)
                            sent[str(order)] = time.monotonic()

                        achieved[rate, name] = await on_schedule(rate, seconds, place)
                        ids = [UUID(order) for order in sent]
                        await _until(_all_shipped(sales, ids), max(10.0, 3 * seconds))

                    async def hop(i: int, rate: int = rate) -> None:
                        key = f"{rate}-{i}"
                        issued[rate, RAW][key] = time.monotonic()
                        await js.publish(f"{HOPS[0]}.{key}", body)

                    await orders(TOOLKIT)
                    await processes["mark"].signal(signal.SIGUSR1, b"paused")
                    reactor = Reactor(marking(), dead_letters, nc, threaded=True)
                    await reactor.run(until_head=True)
                    turn = asyncio.Event()
                    reacting = asyncio.create_task(reactor.run(turn))
                    await orders(SERVED)
                    turn.set()
                    await reacting
                    await processes["mark"].signal(signal.SIGUSR2, b"resumed")
                    achieved[rate, RAW] = await on_schedule(rate, seconds, hop)
                    hopped += len(issued[rate, RAW])

                    async def forwarded(hopped: int = hopped) -> bool:
                        info = await js.stream_info(HOPS[1])
                        return info.state.messages >= hopped

                    await _until(forwarded, max(10.0, 3 * seconds))
                    await asyncio.sleep(0.05)  # the last consumer's push is under way
                stopped = await asyncio.gather(*(p.stop() for p in processes.values()))
                seen = dict(zip(processes, stopped, strict=True))
            finally:
                for process in processes.values():
                    process.kill()
                stop_relay.set()
                await relaying
                await nc.close()
    finally:
        sales.close()
    by_contender = {
        TOOLKIT: seen["ship"] | seen["mark"],
        SERVED: seen["ship"] | {step: ids for step, ids in served.items() if ids},
        RAW: seen["forward"] | seen["last"],
    }
    return {
        rate: {
            name: _chain(name, rate, achieved[rate, name], issued[rate, name], by_contender[name])
            for name in (TOOLKIT, SERVED, RAW)
        }
        for rate in rates
    }


def measure(rates: list[int], seconds: float, folder: Path) -> Results:
    return asyncio.run(measure_async(rates, seconds, folder))


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def report(seconds: float, results: Results) -> Table:
    table = Table(
        title=f"order placed -> marked shipped in sales' log, two policies away; "
        f"{seconds:g} s a rate"
    )
    columns = ["offered /s", "path", "achieved /s", "orders"]
    columns += [f"{_label(q)} ms (x raw)" for q in PERCENTILES]
    for column in columns:
        table.add_column(column, justify="left" if column == "path" else "right")
    for rate, paths in results.items():
        raw = paths[RAW]
        for name, chain in paths.items():
            unfinished = f" ({chain.unfinished} unfinished)" if chain.unfinished else ""
            table.add_row(
                f"{rate:,}",
                name,
                f"{chain.achieved:,.0f}",
                f"{len(chain.samples):,}{unfinished}",
                *(
                    f"{_ms(chain.percentile(q))} ({chain.percentile(q) / raw.percentile(q):.1f})"
                    for q in PERCENTILES
                ),
            )
    table.caption = (
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, nats-py {version('nats-py')}; "
        "SQLite logs, file storage; processes: the orders', shipping's, sales' policy's "
        "(in the first row) and nats-server; in brackets: the ratio to the raw hops' figure "
        "at the same rate"
    )
    return table


def steps_report(results: Results) -> Table:
    """Where the time goes: each step's p50 and p99."""
    table = Table(title="each step of the chain, ms")
    for column in ("offered /s", "step", "p50", "p99"):
        table.add_column(column, justify="left" if column == "step" else "right")
    for rate, paths in results.items():
        for name, chain in paths.items():
            for k, step in enumerate(STEPS[name].values()):
                table.add_row(
                    f"{rate:,}",
                    f"{SHORT[name]}: {step}",
                    _ms(chain.percentile(0.5, k)),
                    _ms(chain.percentile(0.99, k)),
                )
    return table


def _label(q: float) -> str:
    return "max" if q == 1.0 else f"p{q * 100:g}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.chain",
        description="End-to-end latency of the policy chain sales -> shipping -> sales.",
    )
    parser.add_argument("--rates", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--seconds", type=float, default=10.0, help="at each rate (10)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-chain-") as folder:
        results = measure(args.rates, args.seconds, Path(folder))
    console = Console(width=130)
    console.print(report(args.seconds, results))
    console.print(steps_report(results))


if __name__ == "__main__":
    main()
