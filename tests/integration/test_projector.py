from __future__ import annotations

import asyncio
from decimal import Decimal
from uuid import UUID

import pytest
from nats.aio.client import Client

from contexts.sales import Sales
from projections.billing import Accounts
from projections.billing.translation import cents
from projections.shipping import Shipments
from projections.shipping.translation import ShipmentAwaitingDispatch
from tests.conftest import BACKENDS
from tests.envelopes import stream_message
from tests.flow import Where, home_of, project_all, read_all, relay_all
from toolkit.config import Settings
from toolkit.errors import ProjectionBusyError
from toolkit.read.batches import apply_batch
from toolkit.read.projector import Projector
from toolkit.read.reader import StreamMessage
from toolkit.read.store import ReadModelStore
from toolkit.read.translator import Translator
from toolkit.readmodels import Connection, ReadModelHome


def place(sales: Sales, customers: int, orders: int) -> dict[UUID, int]:
    """Place orders; return what each customer owes, in cents, by sales' own reckoning."""
    ids = [sales.register_customer(f"C{i}", f"c{i}@example.com") for i in range(customers)]
    owed = dict.fromkeys(ids, 0)
    for i in range(orders):
        customer = ids[i % customers]
        lines = [{"sku": "tea", "quantity": 1 + i % 4, "unit_price": Decimal("2.35")}]
        order = sales.place_order(customer, lines)
        if i % 5 == 4:
            sales.cancel_order(order, "changed mind")
        else:
            owed[customer] += cents(sales.get_order(order).total)
    return owed


def owed_by_account(home: ReadModelHome) -> dict[UUID, int]:
    with home.reader() as db:
        assert db is not None
        return {UUID(a): c for a, c in db.execute("SELECT account_id, owed_cents FROM account")}


@BACKENDS
async def test_a_restarted_projector_resumes_from_its_checkpoint(
    sales: Sales, nc: Client, read_models: Settings
) -> None:
    owed = place(sales, customers=7, orders=400)
    total = await relay_all(sales, nc)
    with home_of(read_models, "billing") as home:
        await resume_from_the_checkpoint(home, nc, total, owed)


class _StoppingAccounts(Accounts):
    """Billing's projection, setting ``stop`` once it has applied ``batches`` batches."""

    def __init__(self, stop: asyncio.Event, batches: int) -> None:
        super().__init__()
        self._stop, self._left = stop, batches

    def apply_batch(self, facts: list[object], db: Connection) -> None:
        super().apply_batch(facts, db)
        self._left -= 1
        if self._left <= 0:
            self._stop.set()


async def resume_from_the_checkpoint(
    home: ReadModelHome, nc: Client, total: int, owed: dict[UUID, int]
) -> None:
    # First run: stopped part way through the stream (by its projection, after a few
    # batches: a projector polled from here may reach the head before it is told).
    stop = asyncio.Event()
    stopping = _StoppingAccounts(stop, batches=4)
    store = ReadModelStore(home.live(), stopping)
    first = Projector(stopping, store, nc, batch_size=25, transaction_size=25)
    await first.run(stop)
    store.close()
    stopped_at = first.stats.checkpoints["sales"]
    assert 0 < stopped_at < total

    # Second run: a new process would do exactly this.
    store = ReadModelStore(home.live(), Accounts())
    assert store.checkpoint("sales") == stopped_at
    second = Projector(Accounts(), store, nc, batch_size=25, transaction_size=25)
    await second.run(until_head=True)
    store.close()

    assert second.stats.duplicates == 0  # it asked the stream for what came after
    assert first.stats.applied + second.stats.applied == total
    assert second.stats.checkpoints["sales"] == total
    assert owed_by_account(home) == owed  # every charge counted once


@BACKENDS
async def test_redelivered_messages_are_not_applied_twice(
    sales: Sales, nc: Client, read_models: Settings
) -> None:
    owed = place(sales, customers=2, orders=20)
    total = await relay_all(sales, nc)
    await project_all(Accounts(), read_models, nc)
    with home_of(read_models, "billing") as home:
        store = ReadModelStore(home.live(), Accounts())
        try:
            # Everything again, as an at-least-once delivery after a crash could bring it.
            again = apply_batch(store, Accounts.translators[0], await read_all(nc))
            assert (again.applied, again.duplicates) == (0, total)
        finally:
            store.close()
        assert owed_by_account(home) == owed


def message(seq: int, body: bytes) -> StreamMessage:
    """A message with the relay's message id but a body of any bytes."""
    return StreamMessage(
        "sales", seq, f"sales.order.x{seq}.E", {"Nats-Msg-Id": f"sales:{seq}"}, body
    )


def event(seq: int, type_: str, data: bytes, version: int = 1) -> StreamMessage:
    """The relay's message at ``seq`` (log position ``seq``), of aggregate ``x<seq>``."""
    return stream_message(seq, type_, data, schemaversion=version, aggregate_id=f"x{seq}")


def test_unknown_types_are_skipped_and_bad_bodies_dead_lettered(read_models: Settings) -> None:
    with home_of(read_models, "shipping") as home:
        store = ReadModelStore(home.live(), Shipments())
    translator: Translator = Shipments.translators[0]
    try:
        result = apply_batch(
            store,
            translator,
            [
                event(1, "sales.SomethingNew", b"{}"),
                event(2, "sales.OrderPlaced", b"{}", version=2),
                event(3, "sales.OrderPlaced", b'{"order_id": "nope"}'),
                message(4, b"not json"),
                message(5, b'{"type": "sales.OrderPlaced", "data": {}}'),
            ],
        )
        assert (result.applied, result.skipped, result.dead_lettered) == (0, 1, 4)
        assert result.untrusted == 2  # bodies that are no envelope of the relay's
        assert store.checkpoint("sales") == 5  # nothing blocks the stream
        reasons = dict(store.db.execute("SELECT sequence, reason FROM toolkit_dead_letter"))
        assert "v2 is newer than this consumer reads (up to v1)" in reasons[2]
        assert "does not match its contract" in reasons[3]
        assert "not a CloudEvents JSON envelope" in reasons[4]
        assert "schemaversion" in reasons[5]
    finally:
        store.close()


def test_a_writer_that_went_around_the_lock_writes_nothing(read_models: Settings) -> None:
    """Two stores on one generation (as if a lock had been lost): the one whose checkpoint
    is stale is refused, its batch rolled back, so nothing is applied twice."""
    translator: Translator = Shipments.translators[0]
    skipped = [event(seq, "sales.SomethingNew", b"{}") for seq in (1, 2, 3)]
    with home_of(read_models, "shipping") as home:
        first = ReadModelStore(home.live(), Shipments())
        second = ReadModelStore(home.live(), Shipments())
    try:
        first.join("sales", 0)
        second.join("sales", 0)
        assert apply_batch(first, translator, skipped[:2]).skipped == 2
        with pytest.raises(ProjectionBusyError, match="sales checkpoint is no longer 0"):
            apply_batch(second, translator, skipped)
        assert second.checkpoint("sales") == 0  # nothing of its batch was written
        assert apply_batch(first, translator, skipped).duplicates == 2  # the first goes on
        assert first.checkpoint("sales") == 3
    finally:
        first.close()
        second.close()


def test_a_second_writer_is_refused(read_models: Settings) -> None:
    with home_of(read_models, "shipping") as home, home_of(read_models, "shipping") as other:
        with (
            home.writer_lock(),
            pytest.raises(ProjectionBusyError, match="stop it first"),
            other.writer_lock(),
        ):
            pass
        with home.writer_lock(), other.writer_lock("replay"):  # a replay beside it: fine
            pass
        with other.writer_lock():  # released
            pass


def poisoned(on_poison: str, poison: set[str], transient: int = 0) -> Shipments:
    """Shipments that fail to record the shipments in ``poison`` as awaiting dispatch:
    always, or only the first ``transient`` times."""
    failures: dict[str, int] = {}

    class Poisoned(Shipments):
        retries = 2
        retry_delay = 0.01

        def apply_many(self, facts: list[object], db: Connection) -> None:
            for fact in facts:
                if not isinstance(fact, ShipmentAwaitingDispatch):
                    continue
                shipment = str(fact.shipment_id)
                if shipment in poison:
                    failures[shipment] = failures.get(shipment, 0) + 1
                    if not transient or failures[shipment] <= transient:
                        raise RuntimeError(f"cannot ship {shipment}")
            super().apply_many(facts, db)

    Poisoned.on_poison = on_poison  # type: ignore[assignment]
    return Poisoned()


def three_orders(sales: Sales) -> tuple[UUID, UUID, UUID]:
    customer = sales.register_customer("Ann", "ann@example.com")
    line = [{"sku": "tea", "quantity": 1, "unit_price": "1.00"}]
    a, b = sales.place_order(customer, line), sales.place_order(customer, line)
    sales.cancel_order(a, "changed mind")  # a later event of the poisoned aggregate
    c = sales.place_order(customer, line)
    return a, b, c


def dead_letters(where: Where) -> dict[int, str]:
    with home_of(where, "shipping") as home, home.reader() as db:
        assert db is not None
        return dict(db.execute("SELECT sequence, reason FROM toolkit_dead_letter"))


def shipments(where: Where) -> dict[str, str]:
    with home_of(where, "shipping") as home, home.reader() as db:
        assert db is not None
        return dict(db.execute("SELECT shipment_id, status FROM shipment"))


@BACKENDS
async def test_a_poison_event_is_retried_then_parked_with_its_aggregate(
    sales: Sales, nc: Client, read_models: Settings
) -> None:
    a, b, c = three_orders(sales)
    head = await relay_all(sales, nc)
    stats = await project_all(poisoned("park-aggregate", {str(a)}), read_models, nc)
    assert (stats.retries, stats.parked) == (2, 1)
    assert stats.checkpoints["sales"] == head  # the projection kept going
    assert shipments(read_models) == {str(b): "awaiting_dispatch", str(c): "awaiting_dispatch"}
    assert dead_letters(read_models) == {
        2: f"RuntimeError: cannot ship {a} (failed 3 times)",
        4: "parked behind sales sequence 2",  # the cancellation waits with its order
    }


@BACKENDS
async def test_a_poison_event_alone_is_parked_when_the_projection_says_so(
    sales: Sales, nc: Client, read_models: Settings
) -> None:
    a, b, c = three_orders(sales)
    await relay_all(sales, nc)
    stats = await project_all(poisoned("skip-event", {str(a)}), read_models, nc)
    assert stats.parked == 1
    assert dead_letters(read_models) == {2: f"RuntimeError: cannot ship {a} (failed 3 times)"}
    assert set(shipments(read_models)) == {str(b), str(c)}


@BACKENDS
async def test_a_transient_failure_is_retried_and_applied(
    sales: Sales, nc: Client, read_models: Settings
) -> None:
    a, b, c = three_orders(sales)
    await relay_all(sales, nc)
    stats = await project_all(poisoned("park-aggregate", {str(a)}, transient=2), read_models, nc)
    # Two failures: the batch's, and the message's alone while finding which one failed;
    # the first retry then succeeds.
    assert (stats.retries, stats.parked) == (1, 0)
    assert dead_letters(read_models) == {}
    assert shipments(read_models) == {
        str(a): "called_off",
        str(b): "awaiting_dispatch",
        str(c): "awaiting_dispatch",
    }


@BACKENDS
async def test_parking_survives_a_restart(sales: Sales, nc: Client, read_models: Settings) -> None:
    a, _, _ = three_orders(sales)
    await relay_all(sales, nc)
    await project_all(poisoned("park-aggregate", {str(a)}), read_models, nc)
    customer = sales.get_order(a).customer_id
    sales.add_order_note(a, "private")  # private: not published
    d = sales.place_order(customer, [{"sku": "mug", "quantity": 1, "unit_price": "2.00"}])
    await relay_all(sales, nc)
    await project_all(Shipments(), read_models, nc)  # a new process, the fixed code
    assert str(d) in shipments(read_models) and str(a) not in shipments(read_models)
