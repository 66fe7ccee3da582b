"""Slice workers share one read model by lease: workers joining, stopping and dying
mid-stream; each message applied once, each aggregate in order, and the model equal to
a clean build (toolkit.read.slices)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import ClassVar
from uuid import UUID

import msgspec
import pytest
from nats.aio.client import Client

from contexts.sales import Sales
from projections.billing import Accounts
from tests.conftest import BACKENDS, wait_for
from tests.flow import home_of, project_all, read_all, relay_all
from tests.ledger import Ledger
from toolkit import IntegrationEvent, Settings, Translator, contract
from toolkit.errors import ConfigurationError
from toolkit.nats.connection import Connection as NatsConnection
from toolkit.nats.leases import LeaseGroup
from toolkit.read.projection import Projection
from toolkit.read.projector import Projector
from toolkit.read.replay import rebuild
from toolkit.read.slices import SlicedStore, SliceWorker
from toolkit.read.store import ReadModelStore
from toolkit.readmodels import Connection, Generation, ReadModelHome, tables

TTL = 1.0
LINE = [{"sku": "tea", "quantity": 1, "unit_price": "1.00"}]


class SlicedLedger(Ledger):
    slices: ClassVar[int | None] = 8


class SlicedAccounts(Accounts):
    slices: ClassVar[int | None] = 8


customer_orders = Translator("sales")


@contract("sales.OrderPlaced", version=1)
class Placed(IntegrationEvent, frozen=True, kw_only=True):
    order_id: UUID
    customer_id: UUID


class CustomerOrder(msgspec.Struct, frozen=True):
    customer: str
    order: str


@customer_orders.on(Placed)
def placed(e: Placed) -> CustomerOrder:
    return CustomerOrder(str(e.customer_id), str(e.order_id))


class CustomerOrders(Projection):
    """Each customer's orders in the order applied, keyed by the customer: orders are
    aggregates of their own, so only the key keeps one customer's in their order."""

    name: ClassVar[str] = "customer_orders"
    translators = (customer_orders,)
    slices: ClassVar[int | None] = 8

    def create_tables(self, db: Connection) -> None:
        db.execute(
            "CREATE TABLE IF NOT EXISTS seen (applied INTEGER PRIMARY KEY AUTOINCREMENT,"
            " customer TEXT NOT NULL, order_id TEXT NOT NULL UNIQUE)"
        )

    def apply(self, fact: object, db: Connection) -> None:
        assert isinstance(fact, CustomerOrder)
        db.execute(
            "INSERT INTO seen (customer, order_id) VALUES (?, ?)", (fact.customer, fact.order)
        )

    def slice_key(self, fact: object) -> str | None:
        assert isinstance(fact, CustomerOrder)
        return fact.customer


class _Dying(LeaseGroup):
    """Leases of a worker that dies as SIGKILL would end it: nothing is given back."""

    async def _give_back(self) -> None:
        self._set_held(frozenset())


class Workers:
    """Slice workers on one generation, started and ended one by one."""

    def __init__(
        self,
        generation: Generation,
        make: type[Projection],
        nc: Client,
        home: ReadModelHome | None = None,
    ) -> None:
        self.generation, self.make, self.nc, self.home = generation, make, nc, home
        self.running: dict[str, tuple[SliceWorker, asyncio.Event, asyncio.Task[object]]] = {}
        self.stores: list[SlicedStore] = []

    def start(self, name: str, *, dies: bool = False) -> SliceWorker:
        projection = self.make(0) if issubclass(self.make, Ledger) else self.make()
        slices = projection.slices
        assert slices is not None
        store = SlicedStore(self.generation, projection, slices)
        self.stores.append(store)
        kind = _Dying if dies else LeaseGroup
        leases = kind(
            NatsConnection.of(self.nc),
            f"projection.{projection.name}",
            slices,
            ttl=TTL,
            worker=name,
        )
        worker = SliceWorker(projection, store, self.nc, leases, batch_size=20, transaction_size=20)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop, home=self.home))
        self.running[name] = (worker, stop, task)
        return worker

    async def end(self, name: str, *, kill: bool = False) -> None:
        _, stop, task = self.running.pop(name)
        if kill:
            task.cancel()
        else:
            stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def close(self) -> None:
        for name in list(self.running):
            await self.end(name)
        for store in self.stores:
            store.close()


def _rows(generation: Generation, sql: str) -> list[tuple[object, ...]]:
    from toolkit.readmodels import backends

    db = backends.connect(generation)
    try:
        return [tuple(r) for r in db.execute(sql).fetchall()]
    finally:
        db.close()


def _at(generation: Generation, sequence: int, slices: int = 8) -> bool:
    """Whether every slice of ``generation`` (cut into ``slices``) has reached ``sequence``."""
    found = _checkpoints(generation)
    return len(found) == slices and min(found.values()) >= sequence


def _checkpoints(generation: Generation) -> dict[str, int]:
    from toolkit.readmodels import backends

    db = backends.connect(generation)
    try:
        return dict(tables.checkpoints(db))
    finally:
        db.close()


@BACKENDS
@pytest.mark.timeout(120)
async def test_slice_workers_joining_stopping_and_dying_apply_each_message_once_in_order(
    sales: Sales, nc: Client, read_models: Settings
) -> None:
    customers = [sales.register_customer(f"C{i}", f"c{i}@example.com") for i in range(7)]
    for i in range(240):
        order = sales.place_order(customers[i % 7], LINE)
        if i % 3 == 0:
            sales.cancel_order(order, "changed")
    head = await relay_all(sales, nc)

    with home_of(read_models, "ledger") as home:
        generation = home.live()
        workers = Workers(generation, SlicedLedger, nc)
        try:
            workers.start("a")
            workers.start("b")
            workers.start("c", dies=True)

            def applied() -> int:
                return len(_rows(generation, "SELECT 1 FROM entry"))

            await wait_for(lambda: applied() >= 60, within=30)
            await workers.end("c", kill=True)  # its slices wait out their leases, then move
            workers.start("d")
            await wait_for(lambda: applied() >= 150, within=30)
            await workers.end("a")  # stops cleanly: its slices move at once
            await wait_for(
                lambda: _at(generation, head),
                within=60,
            )
        finally:
            await workers.close()

    entries = _rows(generation, "SELECT order_id, kind, applied FROM entry ORDER BY applied")
    placed = [e for e in entries if e[1] == "placed"]
    cancelled = {e[0]: e[2] for e in entries if e[1] == "cancelled"}
    assert len(placed) == 240 and len(cancelled) == 80  # each once: (order, kind) is unique
    first = {e[0]: int(str(e[2])) for e in placed}
    assert all(
        first[order] < int(str(at)) for order, at in cancelled.items()
    )  # each aggregate in order
    assert set(_checkpoints(generation)) == {f"sales#{k}" for k in range(8)}


@pytest.mark.timeout(120)
async def test_billing_cut_into_slices_equals_a_clean_build(
    sales: Sales, nc: Client, data_dir: Path, tmp_path: Path
) -> None:
    customers = [sales.register_customer(f"C{i}", f"c{i}@example.com") for i in range(20)]
    for i in range(200):
        order = sales.place_order(customers[(i * 7) % 20], LINE)
        if i % 4 == 0:
            sales.cancel_order(order, "changed")
    head = await relay_all(sales, nc)
    settings = Settings(data_dir=data_dir)
    with home_of(settings, "billing") as home:
        generation = home.live()
        workers = Workers(generation, SlicedAccounts, nc)
        try:
            for name in ("a", "b", "c", "d"):
                workers.start(name)
            await wait_for(
                lambda: _at(generation, head),
                within=60,
            )
        finally:
            await workers.close()
    clean = tmp_path / "clean"
    clean.mkdir()
    await project_all(Accounts(), clean, nc)
    with home_of(Settings(data_dir=clean), "billing") as home:
        reference = home.live()
    for table in ("account", "charge"):
        sql = f"SELECT * FROM {table} ORDER BY 1"
        assert _rows(generation, sql) == _rows(reference, sql), table


@pytest.mark.timeout(120)
async def test_a_key_taken_from_the_fact_keeps_each_customers_orders_in_order(
    sales: Sales, nc: Client, data_dir: Path
) -> None:
    customers = [sales.register_customer(f"C{i}", f"c{i}@example.com") for i in range(5)]
    expected: dict[str, list[str]] = {str(c): [] for c in customers}
    for i in range(150):
        customer = customers[(i * 3) % 5]
        expected[str(customer)].append(str(sales.place_order(customer, LINE)))
    head = await relay_all(sales, nc)
    with home_of(Settings(data_dir=data_dir), "customer_orders") as home:
        generation = home.live()
        workers = Workers(generation, CustomerOrders, nc)
        try:
            workers.start("a")
            workers.start("b", dies=True)
            await wait_for(lambda: len(_rows(generation, "SELECT 1 FROM seen")) >= 40, within=30)
            await workers.end("b", kill=True)
            workers.start("c")
            await wait_for(
                lambda: _at(generation, head),
                within=60,
            )
        finally:
            await workers.close()
    seen: dict[str, list[str]] = {}
    for who, order in _rows(generation, "SELECT customer, order_id FROM seen ORDER BY applied"):
        seen.setdefault(str(who), []).append(str(order))
    assert seen == expected


async def test_a_model_kept_by_one_worker_is_handed_over_to_slices_and_refused_after(
    sales: Sales, nc: Client, data_dir: Path
) -> None:
    customers = [sales.register_customer(f"C{i}", f"c{i}@example.com") for i in range(3)]
    for i in range(30):
        sales.place_order(customers[i % 3], LINE)
    head = await relay_all(sales, nc)
    settings = Settings(data_dir=data_dir)
    await project_all(Accounts(), settings.data_dir, nc)  # one worker, to the head
    for i in range(10):
        sales.place_order(customers[i % 3], LINE)
    later = await relay_all(sales, nc)
    with home_of(settings, "billing") as home:
        generation = home.live()
        workers = Workers(generation, SlicedAccounts, nc)
        try:
            workers.start("a")
            workers.start("b")
            await wait_for(
                lambda: _at(generation, later),
                within=30,
            )
        finally:
            await workers.close()
        rows = _rows(generation, "SELECT count(*), sum(owed_cents) FROM account")
        assert rows == [(3, 4000)]  # 40 orders of 1.00, none applied twice
        assert head < later
        # One worker of the whole is refused now: the model is cut into slices.
        store = ReadModelStore(generation, Accounts())
        try:
            with pytest.raises(ConfigurationError, match="cut into 8 slices on sales"):
                await Projector(Accounts(), store, nc).run(until_head=True)
        finally:
            store.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("read_models", ["sqlite", "postgres"], indirect=True)
@pytest.mark.parametrize("cuts", [[(2, 0)], [(8, 0), (3, 40)]], ids=["2 parts", "8, then 3"])
async def test_a_model_the_old_partition_workers_cut_otherwise_is_refused_with_what_to_do(
    nc: Client, read_models: Settings, cuts: list[tuple[int, int]]
) -> None:
    """Partition workers recorded their partitionings as slices record their cut: a
    model they cut into another count than the projection's slices, or cut more than
    once (repartitioning), has no slices to hand over: slice workers, and a worker of
    the whole, say to rebuild it (docs/projections.md, migrating from partition workers)."""
    with home_of(read_models, "billing") as home:
        generation = home.live()
        store = ReadModelStore(generation, Accounts())
        try:
            store.join("sales", 30)  # one worker got to 30, then partition workers took over
            with store._transaction("exclusive") as db:
                for count, head in cuts:
                    tables.repartition(db, "sales", count, head)
        finally:
            store.close()
        sliced = SlicedStore(generation, SlicedAccounts(), 8)
        try:
            with pytest.raises(
                ConfigurationError, match="rebuild it with 'toolkit replay billing'"
            ):
                sliced.cut("sales", 0)
        finally:
            sliced.close()
        whole = ReadModelStore(generation, Accounts())
        try:
            with pytest.raises(ConfigurationError, match="'toolkit replay billing'"):
                await Projector(Accounts(), whole, nc).run(until_head=True)
        finally:
            whole.close()
        assert _checkpoints(generation) == {}  # nothing taken over, nothing moved
        assert len(_epochs(generation)) == len(cuts)


def _epochs(generation: Generation) -> list[tuple[int, int]]:
    from toolkit.readmodels import backends

    db = backends.connect(generation)
    try:
        return tables.epochs(db, "sales")
    finally:
        db.close()


class _HeldForever:
    """Leases as a worker cut off from NATS believes them: every slice, still valid."""

    def __init__(self, slices: int) -> None:
        self.held = frozenset(range(slices))

    def holds(self, slice_: int) -> bool:
        return True


@pytest.mark.timeout(60)
async def test_a_worker_that_lost_its_slices_without_knowing_writes_nothing(
    sales: Sales, nc: Client, data_dir: Path
) -> None:
    """The fence: a slice's checkpoint moves only from where its writer left it. The
    stale worker read the same checkpoints as the new holder; the new holder wrote
    first, so the stale one's whole transaction is refused, and it reads again."""
    customers = [sales.register_customer(f"C{i}", f"c{i}@example.com") for i in range(4)]
    for i in range(40):
        sales.place_order(customers[i % 4], LINE)
    await relay_all(sales, nc)
    batch = await read_all(nc)
    with home_of(Settings(data_dir=data_dir), "ledger") as home:
        generation = home.live()
    workers = []
    for worker in ("stale", "new"):
        projection = SlicedLedger(0 if worker == "stale" else 1)
        store = SlicedStore(generation, projection, 8)
        slice_worker = SliceWorker(projection, store, nc, _HeldForever(8))  # type: ignore[arg-type]
        await slice_worker._join("sales")
        store.hold("sales", frozenset(range(8)))
        slice_worker.reading_from["sales"] = 1
        workers.append(slice_worker)
    stale, new = workers
    try:
        translator = stale.projection.translators[0]
        await new._store_apply(translator, batch, asyncio.Event())
        await stale._store_apply(translator, batch, asyncio.Event())  # refused, then nothing
        rows = _rows(generation, "SELECT order_id, kind, worker FROM entry")
        assert len(rows) == 40 and {r[2] for r in rows} == {1}
        assert set(_checkpoints(generation).values()) == {batch[-1].sequence}
    finally:
        for w in workers:
            w.store.close()


@pytest.mark.timeout(120)
async def test_slice_workers_go_on_in_the_generation_a_replay_built(
    sales: Sales, nc: Client, data_dir: Path, tmp_path: Path
) -> None:
    """A replay builds a generation with one checkpoint per stream and moves readers to
    it; the running workers follow, cut it into slices from there, and go on."""
    customers = [sales.register_customer(f"C{i}", f"c{i}@example.com") for i in range(6)]
    for i in range(60):
        sales.place_order(customers[i % 6], LINE)
    head = await relay_all(sales, nc)
    with home_of(Settings(data_dir=data_dir), "billing") as home:
        first = home.live()
        workers = Workers(first, SlicedAccounts, nc, home)
        try:
            workers.start("a")
            workers.start("b")
            await wait_for(lambda: min(_checkpoints(first).values(), default=0) >= head, within=30)
            result = await rebuild(SlicedAccounts(), home, nc)
            rebuilt = result.generation
            assert rebuilt != first and home.current() == rebuilt
            for i in range(30):
                sales.place_order(customers[i % 6], LINE)
            later = await relay_all(sales, nc)
            await wait_for(
                lambda: _at(rebuilt, later),
                within=30,
            )
        finally:
            await workers.close()
        rows = _rows(rebuilt, "SELECT count(*), sum(owed_cents), sum(open_charges) FROM account")
        assert rows == [(6, 9000, 90)]  # 90 orders of 1.00, each once


@pytest.mark.timeout(60)
async def test_status_shows_which_worker_holds_which_slices(
    sales: Sales, nc: Client, data_dir: Path
) -> None:
    from toolkit.ops.status import collect, render
    from toolkit.readmodels.interface import SLICE_WORKERS
    from toolkit.system import System

    customer = sales.register_customer("C", "c@example.com")
    for _ in range(10):
        sales.place_order(customer, LINE)
    head = await relay_all(sales, nc)
    system = System(contexts={"sales": Sales}, projections={"billing": SlicedAccounts})
    settings = Settings(data_dir=data_dir)
    with home_of(settings, "billing") as home, home.writer_lock(SLICE_WORKERS):
        generation = home.live()  # (its workers share the writer lock: status says live)
        workers = Workers(generation, SlicedAccounts, nc)
        try:
            a, b = workers.start("a"), workers.start("b")
            await wait_for(
                lambda: (
                    len(a.leases.held) == len(b.leases.held) == 4
                    and min(_checkpoints(generation).values(), default=0) >= head
                ),
                within=30,
            )
            report = await collect(system, settings, nc)
            shares = {"a": sorted(a.leases.held), "b": sorted(b.leases.held)}
        finally:
            await workers.close()
    billing = report["projections"]["billing"]
    assert billing["state"] == "live"
    held = billing["slices"]["workers"]
    assert {w: sorted(h["slices"]) for w, h in held.items()} == shares
    assert billing["slices"]["free"] == []
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render(report))
    text = console.export_text()
    assert "projection billing worker a" in text and "holds 4 of 8 slices" in text
    assert f"sales (8 slices) {head}" in text


@pytest.mark.parametrize("read_models", ["sqlite", "postgres"], indirect=True)
def test_slice_workers_share_the_writer_lock_and_keep_out_what_needs_the_projection_stopped(
    read_models: Settings,
) -> None:
    from toolkit.errors import ProjectionBusyError
    from toolkit.readmodels.interface import SLICE_WORKERS

    with home_of(read_models, "billing") as home, home_of(read_models, "billing") as other:
        with home.writer_lock(SLICE_WORKERS), other.writer_lock(SLICE_WORKERS):
            # a worker of the whole, a rewind, a dead letter retry: refused meanwhile
            with pytest.raises(ProjectionBusyError, match="stop it first"), other.writer_lock():
                pass
            with other.writer_lock("replay"):  # a replay builds beside them
                pass
        # and while one of those runs, no slice worker starts (PostgreSQL frees a closed
        # session's advisory locks a moment after the client has closed it)
        for _ in range(100):
            try:
                held = home.writer_lock()
                held.__enter__()
                break
            except ProjectionBusyError:
                time.sleep(0.05)
        else:
            raise AssertionError("the slice workers' shared locks were never released")
        try:
            with pytest.raises(ProjectionBusyError), other.writer_lock(SLICE_WORKERS):
                pass
        finally:
            held.__exit__(None, None, None)
