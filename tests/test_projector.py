from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import pytest
from nats.aio.client import Client

from contexts.sales import Sales
from projections.billing import Accounts
from projections.billing.translation import cents
from projections.shipping import Shipments
from tests.conftest import wait_for
from tests.flow import project_all, read_all, relay_all
from toolkit.errors import ProjectionBusyError, ProjectionError
from toolkit.projector import Projector
from toolkit.reader import StreamMessage
from toolkit.store import ProjectionHome, ReadModelStore, dump
from toolkit.translator import Translator


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


def owed_by_account(home: ProjectionHome) -> dict[UUID, int]:
    with home.reader() as db:
        assert db is not None
        return {UUID(a): c for a, c in db.execute("SELECT account_id, owed_cents FROM account")}


async def test_a_restarted_projector_resumes_from_its_checkpoint(
    sales: Sales, nc: Client, data_dir: Path
) -> None:
    owed = place(sales, customers=7, orders=400)
    total = await relay_all(sales, nc)
    home = ProjectionHome(data_dir, "billing")

    # First run: stopped part way through the stream.
    store = ReadModelStore(home.live(), Accounts())
    first = Projector(Accounts(), store, nc, batch_size=25, transaction_size=25)
    stop = asyncio.Event()
    task = asyncio.create_task(first.run(stop))
    await wait_for(lambda: first.stats.checkpoints.get("sales", 0) >= total // 2)
    stop.set()
    await task
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


async def test_redelivered_messages_are_not_applied_twice(
    sales: Sales, nc: Client, data_dir: Path
) -> None:
    owed = place(sales, customers=2, orders=20)
    total = await relay_all(sales, nc)
    await project_all(Accounts(), data_dir, nc)
    home = ProjectionHome(data_dir, "billing")
    store = ReadModelStore(home.live(), Accounts())
    try:
        # Everything again, as an at-least-once delivery after a crash could bring it.
        again = store.apply(Accounts.translators[0], await read_all(nc))
        assert (again.applied, again.duplicates) == (0, total)
    finally:
        store.close()
    assert owed_by_account(home) == owed


def message(seq: int, body: bytes) -> StreamMessage:
    return StreamMessage(
        "sales", seq, f"sales.order.x{seq}.E", {"Nats-Msg-Id": f"sales:{seq}"}, body
    )


def envelope(type_: str, data: bytes, version: int = 1) -> bytes:
    return b'{"specversion":"1.0","type":"%s","schemaversion":%d,"data":%s}' % (
        type_.encode(),
        version,
        data,
    )


def test_unknown_types_are_skipped_and_bad_bodies_dead_lettered(data_dir: Path) -> None:
    home = ProjectionHome(data_dir, "shipping")
    store = ReadModelStore(home.live(), Shipments())
    translator: Translator = Shipments.translators[0]
    try:
        result = store.apply(
            translator,
            [
                message(1, envelope("sales.SomethingNew", b"{}")),
                message(2, envelope("sales.OrderPlaced", b"{}", version=2)),
                message(3, envelope("sales.OrderPlaced", b'{"order_id": "nope"}')),
                message(4, b"not json"),
                message(5, b'{"type": "sales.OrderPlaced", "data": {}}'),
            ],
        )
        assert (result.applied, result.skipped, result.dead_lettered) == (0, 1, 4)
        assert store.checkpoint("sales") == 5  # nothing blocks the stream
        reasons = dict(store.db.execute("SELECT sequence, reason FROM toolkit_dead_letter"))
        assert "v2 is newer than this consumer reads (up to v1)" in reasons[2]
        assert "does not match its contract" in reasons[3]
        assert "not a CloudEvents JSON envelope" in reasons[4]
        assert "schemaversion" in reasons[5]
    finally:
        store.close()


def test_a_second_writer_is_refused(data_dir: Path) -> None:
    home = ProjectionHome(data_dir, "shipping")
    with (
        home.writer_lock(),
        pytest.raises(ProjectionBusyError, match="stop it first"),
        ProjectionHome(data_dir, "shipping").writer_lock(),
    ):
        pass


async def test_a_failing_projection_stops_with_the_position_named(
    sales: Sales, nc: Client, data_dir: Path
) -> None:
    class Broken(Shipments):
        def apply_many(self, facts: list[object], db: object) -> None:
            raise RuntimeError("disk on fire")

    place(sales, customers=1, orders=3)
    await relay_all(sales, nc)
    with pytest.raises(
        ProjectionError,
        match=r"shipping failed on sales at sequence 2: RuntimeError: disk on fire",
    ):
        await project_all(Broken(), data_dir, nc)
    home = ProjectionHome(data_dir, "shipping")
    with home.reader() as db:
        assert db is not None
        assert dump(db) == {"shipment": []}  # the failed batch left nothing behind
        (checkpoint,) = db.execute(
            "SELECT coalesce(max(sequence), 0) FROM toolkit_checkpoint"
        ).fetchone()
        assert checkpoint < 2  # never past the event that failed
