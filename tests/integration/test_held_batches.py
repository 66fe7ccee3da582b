"""Batches held in one open transaction while a projector catches up (see
:mod:`toolkit.read.store`): committed together with their checkpoint, a failing one rolled
back alone, and a transaction the database rolled back read again, nothing applied twice
and nothing lost."""

from __future__ import annotations

from typing import Any

import pytest
from nats.aio.client import Client

from contexts.sales import Sales
from projections.billing import Accounts
from projections.billing.translation import ChargeRaised
from tests.conftest import BACKENDS, postgres
from tests.envelopes import stream_message
from tests.flow import Where, home_of, relay_all
from toolkit.config import Settings
from toolkit.errors import PoisonMessage
from toolkit.read.batches import apply_batch, apply_held, translate_batch
from toolkit.read.projector import Projector
from toolkit.read.reader import StreamMessage
from toolkit.read.store import CommitLost, ReadModelStore
from toolkit.readmodels import Connection, tables

CUSTOMER = "00000000-0000-4000-8000-000000000000"


def order(seq: int) -> StreamMessage:
    """Sales' OrderPlaced at ``seq``: a charge of 1.00 to one customer."""
    return stream_message(
        seq,
        "sales.OrderPlaced",
        {"order_id": f"00000000-0000-4000-8000-{seq:012d}", "customer_id": CUSTOMER, "total": "1"},
        aggregate_id=f"00000000-0000-4000-8000-{seq:012d}",
    )


def committed(where: Where) -> tuple[int, int]:
    """(checkpoint, charges) as another connection sees them: what is committed."""
    with home_of(where, "billing") as home, home.reader() as db:
        assert db is not None
        (charges,) = db.execute("SELECT count(*) FROM charge").fetchone()
        return tables.checkpoint_of(db, "sales"), int(charges)


class Failing(Accounts):
    """Billing failing on the charge of ``poison``; with ``lose``, the database rolls the
    whole transaction back first (as SQLite does on a full disk, or a lost connection)."""

    def __init__(self, poison: int, *, lose: bool = False, times: int = 1) -> None:
        self.poison = f"00000000-0000-4000-8000-{poison:012d}"
        self.lose = lose
        self.times = times

    def apply_many(self, facts: list[Any], db: Connection) -> None:
        if self.times and any(
            isinstance(f, ChargeRaised) and f.charge_id == self.poison for f in facts
        ):
            self.times -= 1
            if self.lose:
                db.execute("ROLLBACK")
            raise RuntimeError(f"cannot charge {self.poison}")
        super().apply_many(facts, db)


def test_held_batches_commit_together_with_their_checkpoint(read_models: Settings) -> None:
    with home_of(read_models, "billing") as home:
        store = ReadModelStore(home.live(), Accounts())
    translator = Accounts.translators[0]
    try:
        store.join("sales", 0)
        apply_held(store, translator, [order(1), order(2)])
        apply_held(store, translator, [order(3)])
        assert store.checkpoint("sales") == 3
        assert committed(read_models) == (0, 0)  # readers see none of it yet
        store.flush()
        assert committed(read_models) == (3, 3)
        apply_held(store, translator, [order(4)])
        apply_batch(store, translator, [order(5)])  # not held: commits what is held with it
        assert committed(read_models) == (5, 5)
    finally:
        store.close()


def test_a_held_transaction_commits_when_it_is_old_or_large(read_models: Settings) -> None:
    with home_of(read_models, "billing") as home:
        store = ReadModelStore(home.live(), Accounts())
    translator = Accounts.translators[0]
    try:
        store.join("sales", 0)
        store.commit_events = 3
        apply_held(store, translator, [order(1)])
        assert committed(read_models) == (0, 0)
        apply_held(store, translator, [order(2), order(3)])
        assert committed(read_models) == (3, 3)  # three events held: committed
        store.commit_seconds = 0
        apply_held(store, translator, [order(4)])
        assert committed(read_models) == (4, 4)  # held long enough: committed
    finally:
        store.close()


def test_a_failing_held_batch_fails_alone(read_models: Settings) -> None:
    """The batches held before it are committed; nothing of it is written."""
    with home_of(read_models, "billing") as home:
        store = ReadModelStore(home.live(), Failing(3, times=2))
    translator = Accounts.translators[0]
    try:
        store.join("sales", 0)
        apply_held(store, translator, [order(1), order(2)])
        with pytest.raises(PoisonMessage, match="sequence 3"):
            apply_held(store, translator, [order(3), order(4)])
        assert store.checkpoint("sales") == 2
        assert committed(read_models) == (2, 2)
    finally:
        store.close()


def test_a_held_transaction_the_database_rolled_back_is_read_again(
    read_models: Settings,
) -> None:
    with home_of(read_models, "billing") as home:
        store = ReadModelStore(home.live(), Failing(3, lose=True))
    translator = Accounts.translators[0]
    try:
        store.join("sales", 0)
        apply_held(store, translator, [order(1), order(2)])
        with pytest.raises(CommitLost):
            apply_held(store, translator, [order(3), order(4)])
        # The store went back to what is committed: the held batch is to be read again.
        assert store.checkpoint("sales") == 0
        assert committed(read_models) == (0, 0)
        apply_batch(store, translator, [order(1), order(2), order(3), order(4)])
        assert committed(read_models) == (4, 4)
    finally:
        store.close()


@BACKENDS
@pytest.mark.timeout(120)
async def test_a_projector_reads_again_what_the_database_rolled_back(
    sales: Sales, nc: Client, read_models: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Batches of two, so that the projector holds them while more are pending: the
    database loses its transaction once, and the projector reads again from the
    checkpoint committed; every order is charged once."""
    customer = sales.register_customer("Ann", "ann@example.com")
    line = [{"sku": "tea", "quantity": 1, "unit_price": "1.00"}]
    orders = [sales.place_order(customer, line) for _ in range(30)]
    head = await relay_all(sales, nc)
    projection = Failing(0, lose=True)
    projection.poison = str(orders[20])
    with home_of(read_models, "billing") as home, home.writer_lock():
        store = ReadModelStore(home.live(), projection)
        try:
            projector = Projector(projection, store, nc, batch_size=2, transaction_size=2)
            stats = await projector.run(until_head=True)
        finally:
            store.close()
        with home.reader() as db:
            assert db is not None
            rows = db.execute("SELECT owed_cents, open_charges FROM account").fetchall()
    assert projection.times == 0  # the database did lose the transaction
    assert stats.retries == 1
    assert "rolled back the batches held (RuntimeError: cannot charge" in caplog.text
    assert stats.checkpoints["sales"] == head
    assert rows == [(3000, 30)]  # each order once


def drop_connection(store: ReadModelStore) -> None:
    """End the store's connection from the server's side, as a restart does."""
    pid = store.db.info.backend_pid  # type: ignore[attr-defined]
    with postgres("postgres", "dropping a connection") as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


@pytest.mark.parametrize("read_models", ["postgres"], indirect=True)
def test_reads_open_a_connection_the_server_dropped_while_idle_again(
    read_models: Settings,
) -> None:
    """Found out only by the next statement: the read is made again on a new one."""
    with home_of(read_models, "billing") as home:
        store = ReadModelStore(home.live(), Accounts())
    try:
        store.join("sales", 0)
        apply_batch(store, Accounts.translators[0], [order(1)])
        drop_connection(store)
        assert store.dead_letters() == []
        drop_connection(store)
        assert store.epochs("sales") == []
        assert committed(read_models) == (1, 1)
    finally:
        store.close()


@pytest.mark.parametrize("read_models", ["postgres"], indirect=True)
def test_held_batches_lost_under_a_read_are_read_again_by_the_next_batch(
    read_models: Settings,
) -> None:
    """The connection dropped while batches were held, and a read of the dead letters
    met it: the next batch, translated from the checkpoint before the loss, is refused
    with CommitLost (the projector reads again from the checkpoint), not as a mismatch."""
    with home_of(read_models, "billing") as home:
        store = ReadModelStore(home.live(), Accounts())
    translator = Accounts.translators[0]
    try:
        store.join("sales", 0)
        apply_held(store, translator, [order(1), order(2)])
        later = translate_batch(translator, [order(3)], store)  # from checkpoint 2
        drop_connection(store)
        assert store.dead_letters() == []
        assert store.checkpoint("sales") == 0  # what is committed
        with pytest.raises(CommitLost):
            store.write(later, hold=True)
        apply_batch(store, translator, [order(1), order(2), order(3)])  # read again
        assert committed(read_models) == (3, 3)
    finally:
        store.close()
