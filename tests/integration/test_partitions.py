"""Partition workers share one read model: each applies a disjoint set of aggregates, in
each aggregate's order, and a worker joining mid-stream loses and repeats nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import ClassVar
from uuid import UUID

import msgspec
import orjson
import pytest
from nats.aio.client import Client

from contexts.sales import Sales
from projections.billing import Accounts
from tests.conftest import BACKENDS, wait_for
from tests.flow import home_of, read_all, relay_all
from toolkit import IntegrationEvent, Settings, contract
from toolkit.errors import ConfigurationError, ProjectionBusyError
from toolkit.read.projection import Projection
from toolkit.read.projector import Projector, ProjectorStats, owner
from toolkit.read.store import ReadModelStore
from toolkit.read.translator import Translator
from toolkit.readmodels import Connection, Dialect, ReadModelHome
from toolkit.readmodels.tables import dead_letters as read_dead_letters
from toolkit.wire.subjects import aggregate_token

orders_stream = Translator("sales")


@contract("sales.OrderPlaced", version=1)
class Placed(IntegrationEvent, frozen=True, kw_only=True):
    order_id: UUID


@contract("sales.OrderCancelled", version=1)
class Cancelled(IntegrationEvent, frozen=True, kw_only=True):
    order_id: UUID


class Entry(msgspec.Struct, frozen=True):
    order: str
    kind: str


@orders_stream.on(Placed)
def placed(e: Placed) -> Entry:
    return Entry(str(e.order_id), "placed")


@orders_stream.on(Cancelled)
def cancelled(e: Cancelled) -> Entry:
    return Entry(str(e.order_id), "cancelled")


class Ledger(Projection):
    """Every order event, with the worker that applied it, in the order applied."""

    name: ClassVar[str] = "ledger"
    translators = (orders_stream,)
    dialects = (Dialect.SQLITE, Dialect.POSTGRESQL)

    def __init__(self, worker: int) -> None:
        self.worker = worker

    def create_tables(self, db: Connection) -> None:
        counter = {
            Dialect.SQLITE: "INTEGER PRIMARY KEY AUTOINCREMENT",
            Dialect.POSTGRESQL: "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        }[db.dialect]
        db.execute(
            f"CREATE TABLE IF NOT EXISTS entry (applied {counter},"
            " order_id TEXT NOT NULL, kind TEXT NOT NULL, worker INTEGER NOT NULL,"
            " UNIQUE (order_id, kind))"  # applying anything twice fails loudly
        )

    def apply(self, fact: object, db: Connection) -> None:
        assert isinstance(fact, Entry)
        p = db.dialect.param
        db.execute(
            f"INSERT INTO entry (order_id, kind, worker) VALUES ({p}, {p}, {p})",
            (fact.order, fact.kind, self.worker),
        )


LINE = [{"sku": "tea", "quantity": 1, "unit_price": "1.00"}]


@BACKENDS
@pytest.mark.timeout(90)
async def test_partition_workers_and_a_third_joining_mid_stream(
    sales: Sales, nc: Client, read_models: Settings
) -> None:
    app = sales
    customers = [app.register_customer(f"C{i}", f"c{i}@example.com") for i in range(5)]
    orders = [app.place_order(customers[i % 5], LINE) for i in range(300)]
    await relay_all(app, nc)

    with home_of(read_models, "ledger") as home:
        path = home.live()
    running: dict[int, tuple[Projector, asyncio.Event, asyncio.Task[object]]] = {}
    stats: list[Projector] = []

    def start(index: int, partitions: int) -> Projector:
        store = ReadModelStore(path, Ledger(index), partition=index)
        worker = Projector(
            Ledger(index), store, nc, partitions=partitions, batch_size=50, transaction_size=50
        )
        stop = asyncio.Event()
        running[index] = (worker, stop, asyncio.create_task(worker.run(stop)))
        stats.append(worker)
        return worker

    async def halt(index: int) -> None:
        worker, stop, task = running.pop(index)
        stop.set()
        await task
        worker.store.close()

    def at(worker: Projector, sequence: int) -> bool:
        return worker.stats.checkpoints.get("sales", 0) >= sequence

    start(0, 2)
    start(1, 2)
    head = await relay_all(app, nc)
    await wait_for(lambda: all(at(w, head) for w, _, _ in running.values()))
    await halt(1)  # worker 1 falls behind: its share of what follows waits for it
    more = [app.place_order(customers[0], LINE) for _ in range(100)]
    await relay_all(app, nc)
    third = start(2, 3)  # mid-stream: repartitions from the stream's head on
    await wait_for(lambda: len(third.store.epochs("sales")) == 2)
    boundary = third.store.epochs("sales")[1][0]
    for order in orders[:100] + more:  # cancellations after the boundary
        app.cancel_order(order, "after the third worker")
    head = await relay_all(app, nc)
    await wait_for(lambda: at(running[0][0], boundary - 1) and at(third, boundary - 1))
    # Worker 2 owns some of the cancellations of orders worker 1 has yet to place: it
    # must wait at the boundary rather than apply them first.
    assert not at(third, boundary)
    start(1, 3)  # worker 1 comes back, with the new partitioning
    await wait_for(lambda: all(at(w, head) for w, _, _ in running.values()), within=60)
    for index in list(running):
        await halt(index)

    # Which worker had to apply each event: by its sequence, the partitioning then.
    sequences = {
        (orjson.loads(m.data)["subject"], m.subject.rsplit(".", 1)[1]): m
        for m in await read_all(nc)
    }
    with home_of(read_models, "ledger") as home, home.reader() as db:
        assert db is not None
        rows = db.execute("SELECT applied, order_id, kind, worker FROM entry").fetchall()
    assert len(rows) == 400 + 200  # every order placed, every cancellation: nothing lost
    applied_at: dict[tuple[str, str], int] = {}
    for applied, order_id, kind, worker in rows:
        event = "OrderPlaced" if kind == "placed" else "OrderCancelled"
        message = sequences[(order_id, event)]
        partitions = 2 if message.sequence < boundary else 3
        assert worker == owner(aggregate_token(message.subject), partitions)
        applied_at[(order_id, kind)] = applied
    # Each order's cancellation was applied after its placement, across the handover too.
    for (order_id, kind), applied in applied_at.items():
        if kind == "cancelled":
            assert applied_at[(order_id, "placed")] < applied
    assert all(w.stats.foreign > 0 for w in stats)  # each passed over the others' work
    assert sum(w.stats.applied for w in stats) == 600
    assert third.stats.applied > 0


@BACKENDS
async def test_a_model_kept_by_one_worker_is_handed_to_partition_workers_where_it_is(
    sales: Sales, nc: Client, read_models: Settings
) -> None:
    """Case 9 of issue 16: turning an existing projection into partition workers started
    them from sequence 1, applying every event again. Now they go on from the single
    worker's checkpoint, and the two never run together."""
    customer = sales.register_customer("C", "c@example.com")
    first = [sales.place_order(customer, LINE) for _ in range(30)]
    await relay_all(sales, nc)
    with home_of(read_models, "ledger") as home, home_of(read_models, "ledger") as other:
        with home.writer_lock():
            store = ReadModelStore(home.live(), Ledger(-1))
            before = await Projector(Ledger(-1), store, nc).run(until_head=True)
            store.close()
            with (
                pytest.raises(ProjectionBusyError, match="worker of the whole stream"),
                other.writer_lock(0),
            ):
                pass
        for order in first[:10]:
            sales.cancel_order(order, "later")
        [sales.place_order(customer, LINE) for _ in range(20)]
        head = await relay_all(sales, nc)
        workers = []
        with home.writer_lock(0), other.writer_lock(1):
            with pytest.raises(ProjectionBusyError), other.writer_lock():
                pass
            for index in (0, 1):
                store = ReadModelStore(home.live(), Ledger(index), partition=index)
                worker = Projector(Ledger(index), store, nc, partitions=2)
                await worker.run(until_head=True)
                workers.append(worker)
                assert store.checkpoint("sales") == head
        assert sum(w.stats.applied for w in workers) == 30  # only what came after
        assert [w.stats.dead_lettered for w in workers] == [0, 0]
        with home.reader() as db:
            assert db is not None
            rows = db.execute("SELECT order_id, kind, worker FROM entry").fetchall()
        assert len(rows) == before.applied + 30 == 60  # each order event once
        assert {w for _, _, w in rows if w >= 0} == {0, 1}
        # The worker of the whole is refused now, with what to run instead.
        store = ReadModelStore(home.live(), Ledger(-1))
        try:
            with pytest.raises(ConfigurationError, match="--partitions 2"):
                await Projector(Ledger(-1), store, nc).run(until_head=True)
        finally:
            store.close()
        for worker in workers:
            worker.store.close()


async def test_events_carried_again_after_more_workers_joined_are_not_applied_twice(
    sales: Sales, nc: Client, data_dir: Path
) -> None:
    """Two workers applied everything, the stream lost its last events, a third worker
    joined (a new partitioning from the head on) and the relay carried the lost events
    again: the third worker, which may own some of them now, knows them by the log
    position the others had reached at its start (billing's keys would refuse them)."""
    customers = [sales.register_customer(f"C{i}", f"c{i}@x.org") for i in range(6)]
    for customer in customers:
        sales.place_order(customer, LINE)
    head = await relay_all(sales, nc)
    with home_of(data_dir, "billing") as home:
        await run_partitions(home, nc, 2)
        for sequence in range(head - 5, head + 1):  # the tail is lost
            await nc.jetstream().delete_msg("sales", sequence)
        await run_partitions(home, nc, 3)  # a new partitioning from the head on
        await relay_all(sales, nc)  # the lost events again, at new sequences
        workers = await run_partitions(home, nc, 3)
        assert sum(w.applied for w in workers) == 0
        assert sum(w.duplicates for w in workers) > 0
        with home.reader() as db:
            assert db is not None
            assert read_dead_letters(db) == []


async def run_partitions(home: ReadModelHome, nc: Client, partitions: int) -> list[ProjectorStats]:
    """Run billing's ``partitions`` workers to the stream's head, one after the other."""
    done = []
    for partition in range(partitions):
        with home.writer_lock(partition):
            store = ReadModelStore(home.live(), Accounts(), partition=partition)
            try:
                projector = Projector(Accounts(), store, nc, partitions=partitions)
                async with asyncio.timeout(20):
                    done.append(await projector.run(until_head=True))
            finally:
                store.close()
    return done
