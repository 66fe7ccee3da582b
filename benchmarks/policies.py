"""Policies: foreign events turned into a context's own events, a second, catching up on
sales' stream, the toolkit's reactor beside the same reaction written by hand.

    python -m benchmarks.policies [--events N]

The reaction: for each ``sales.OrderPlaced``, a ``Shipment`` is created in a context of its
own (one event, its id derived from the order's, SQLite log). The contenders:

- the toolkit: a :class:`~toolkit.react.policy.Policy` run by the
  :class:`~toolkit.react.reactor.Reactor` to the stream's head: each message's events and
  its tracking record in one transaction of the context's log, so each order causes its
  shipment exactly once whatever crashes;
- hand-written, the obvious alternative: a nats-py ``PullSubscription.fetch(1000)`` loop
  on a durable consumer that decodes each message, runs the same command on an
  eventsourcing ``Application`` (``save`` per message) and acknowledges it. It is at least
  once, not exactly once: a crash between a save and its acknowledgement runs the command
  again, which only the derived id catches here;
- the raw limit: the same fetch loop decoding each message, no command, no save.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from uuid import NAMESPACE_URL, UUID, uuid5

import msgspec
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from rich.console import Console
from rich.table import Table

from benchmarks.relay import sales_stream
from toolkit import BoundedContext, IntegrationEvent, contract
from toolkit.react.deadletters import PolicyDeadLetters
from toolkit.react.policy import Policy
from toolkit.react.reactor import Reactor
from toolkit.react.runner import PolicyRunner
from toolkit.read.translator import Translator
from toolkit.wire import decode_head

BASELINE = "raw limit: fetch(1000), decode only"
TOOLKIT = "toolkit Reactor (exactly once)"
HAND = "fetch(1000) + eventsourcing save + ack (at least once)"


@contract("sales.OrderPlaced", version=1)
class OrderPlaced(IntegrationEvent, frozen=True, kw_only=True):
    """sales' contract as the dispatch context reads it: only what it needs."""

    order_id: UUID


class PlacedOrder(msgspec.Struct, kw_only=True):
    """The same, as the hand-written consumer decodes it."""

    order_id: UUID


class ShipmentWanted(msgspec.Struct, frozen=True):
    """The dispatch context's own language."""

    order_id: UUID


sales_orders = Translator("sales")


@sales_orders.on(OrderPlaced)
def shipment_wanted(e: OrderPlaced) -> ShipmentWanted:
    return ShipmentWanted(e.order_id)


class Shipment(Aggregate):
    @staticmethod
    def create_id(order_id: UUID) -> UUID:
        return uuid5(NAMESPACE_URL, f"shipment/{order_id}")

    @event("Created")
    def __init__(self, order_id: UUID) -> None:
        self.order_id = order_id


def create_shipment(app: Application[UUID], order_id: UUID) -> None:
    app.save(Shipment(order_id=order_id))


class Dispatch(BoundedContext[UUID]):
    """The reacting context: a log of shipments, tracking records beside them."""

    name = "dispatch"
    reacts = True


class Shipments(Policy[Dispatch]):
    name = "shipments"
    translators = (sales_orders,)

    def react(self, fact: object, dispatch: Dispatch) -> None:
        if isinstance(fact, ShipmentWanted):
            create_shipment(dispatch, fact.order_id)


async def toolkit_reactor(nc: Client, folder: Path, head: int) -> int:
    """Own events stored (one a shipment)."""
    dispatch = Dispatch(data_dir=folder)
    try:
        with PolicyDeadLetters(folder / "dead-letters.sqlite") as dead_letters:
            reactor = Reactor(PolicyRunner(Shipments(), dispatch), dead_letters, nc)
            stats = await reactor.run(until_head=True)
        assert stats.positions["sales"] == head, stats
        return stats.events
    finally:
        dispatch.close()


async def _fetch_loop(nc: Client, name: str, head: int, handle: object) -> None:
    sub = await nc.jetstream().pull_subscribe(
        "sales.>",
        durable=name,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL),
        stream="sales",
    )
    assert callable(handle)
    try:
        seen = 0
        while seen < head:
            for msg in await sub.fetch(1000, timeout=5):
                handle(msg.data)
                await msg.ack()
                seen = msg.metadata.sequence.stream
    finally:
        await sub.unsubscribe()


async def hand_written(nc: Client, folder: Path, head: int) -> int:
    """Own events stored, by a consumer a user would write with nats-py and eventsourcing."""
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(folder / "by-hand.sqlite"),
    }
    folder.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once, before timing matters)
    app: Application[UUID] = Application(env=env)
    decode = msgspec.json.Decoder(PlacedOrder).decode
    created = 0

    def handle(body: bytes) -> None:
        nonlocal created
        envelope = decode_head(body)
        if envelope.type == "sales.OrderPlaced":
            create_shipment(app, decode(envelope.data).order_id)
            created += 1

    try:
        await _fetch_loop(nc, "by-hand", head, handle)
    finally:
        app.close()
    return created


async def decode_only(nc: Client, folder: Path, head: int) -> int:
    """No own events: the limit of reading and decoding alone."""
    decode = msgspec.json.Decoder(PlacedOrder).decode
    decoded = 0

    def handle(body: bytes) -> None:
        nonlocal decoded
        envelope = decode_head(body)
        if envelope.type == "sales.OrderPlaced":
            decode(envelope.data)
            decoded += 1

    await _fetch_loop(nc, "decode-only", head, handle)
    assert decoded >= head - 10  # every order (the stream's ten customers aside)
    return 0


async def measure(events: int, folder: Path) -> dict[str, tuple[float, float]]:
    """Per contender: (foreign events a second, own events a second) over sales' stream of
    ``events`` orders (and ten customers)."""
    results: dict[str, tuple[float, float]] = {}
    async with sales_stream(folder, events) as (nc, head):
        for name, run in {
            BASELINE: decode_only,
            HAND: hand_written,
            TOOLKIT: toolkit_reactor,
        }.items():
            started = time.perf_counter()
            own = await run(nc, folder / name.split()[0], head)
            seconds = time.perf_counter() - started
            results[name] = (head / seconds, own / seconds)
    return results


def report(events: int, results: dict[str, tuple[float, float]]) -> Table:
    baseline = results[BASELINE][0]
    ours = results[TOOLKIT][0]
    table = Table(title=f"a policy catching up on {events:,} orders: a shipment each")
    table.add_column("consumer")
    table.add_column("foreign events/s", justify="right")
    table.add_column("own events/s", justify="right")
    table.add_column("ratio to raw limit", justify="right")
    table.add_column("toolkit is x faster", justify="right")
    for name, (foreign, own) in results.items():
        table.add_row(
            name,
            f"{foreign:,.0f}",
            f"{own:,.0f}" if own else "-",
            f"{foreign / baseline:.2f}",
            f"{ours / foreign:.1f}",
        )
    table.caption = (
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, nats-py {version('nats-py')}, "
        f"eventsourcing {version('eventsourcing')}; SQLite logs"
    )
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.policies")
    parser.add_argument("--events", type=int, default=100_000, help="orders in sales' stream")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-policies-") as folder:
        results = asyncio.run(measure(args.events, Path(folder)))
    Console(width=120).print(report(args.events, results))


if __name__ == "__main__":
    main()
