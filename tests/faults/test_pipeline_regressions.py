"""Bugs the pipeline state machine (tests/faults/test_pipeline_states.py) found, each as the
smallest sequence of steps that shows it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

import pytest
from nats.aio.client import Client

from contexts.sales import Sales
from contexts.system import system
from projections.billing import Accounts
from projections.shipping import Shipments
from tests.conftest import eventually, wait_for
from tests.envelopes import relayed
from tests.flow import home_of, place_orders, project_all, public_positions, read_all, relay_all
from toolkit import Relay, RelayError, wire
from toolkit.config import Settings
from toolkit.ops.status import collect
from toolkit.read.batches import BatchResult
from toolkit.read.replay import rebuild, rewind
from toolkit.read.slices import SlicedStore, SliceWorker, slice_of
from toolkit.readmodels import ReadModelHome, tables
from toolkit.readmodels.tables import dead_letters as read_dead_letters
from toolkit.readmodels.tables import dump


async def test_a_replay_ends_when_the_last_messages_of_the_stream_were_deleted(
    sales: Sales, nc: Client, data_dir: Path
) -> None:
    """The relay stops at another publisher's message in its form and says to remove it;
    once it was removed, every replay (and ``project --once``) waited for ever for the
    stream's last sequence, which no reader delivers any more."""
    place_orders(sales, 2, cancel_every=2)
    head = await relay_all(sales, nc)
    js = nc.jetstream()
    ack = await js.publish("sales.order.x.OrderCancelled", b"{}", headers={"Nats-Msg-Id": "x"})
    await js.delete_msg("sales", ack.seq)
    with home_of(data_dir, "shipping") as home:
        async with asyncio.timeout(10):
            replayed = await rebuild(Shipments(), home, nc)
        assert replayed.switched and replayed.stats.checkpoints == {"sales": head}
        with home.reader() as db:
            assert db is not None
            assert len(dump(db)["shipment"]) == 2


async def test_a_rewind_to_a_deleted_sequence_ends(
    sales: Sales, nc: Client, data_dir: Path
) -> None:
    """A rewind to a sequence whose message was deleted (the stream lost its tail and the
    relay carried it again after it) waited for ever for that sequence."""
    place_orders(sales, 3, cancel_every=5)  # 5 events: the third order is the last
    assert await relay_all(sales, nc) == 5
    await nc.jetstream().delete_msg("sales", 5)
    assert await relay_all(sales, nc) == 6  # the third order again, at 6
    with home_of(data_dir, "shipping") as home:
        async with asyncio.timeout(10):
            rewound = await rewind(Shipments(), home, nc, 5)
        assert rewound.stats.checkpoints["sales"] == 4  # nothing at 5: it goes on from 6
        with home.reader() as db:
            assert db is not None
            assert len(dump(db)["shipment"]) == 2


@pytest.mark.parametrize("then", ["nothing", "a command at once"])
async def test_a_running_relay_carries_again_the_tail_the_stream_lost(
    sales: Sales, nc: Client, then: str
) -> None:
    """Messages deleted at the end of the stream under a relay that runs leave the
    stream's last sequence where it was: the relay chained its next publish on them and
    never carried their events again (they were lost for good: a restart resumes after
    the newest message)."""
    place_orders(sales, 4, cancel_every=2)
    relay = Relay(sales, nc, retry_delay=0.05)
    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop))
    try:
        await wait_for(lambda: relay.idle and relay.stats.published == 7)
        js = nc.jetstream()
        for sequence in (6, 7):
            await js.delete_msg("sales", sequence)
        if then == "a command at once":
            place_orders(sales, 1, cancel_every=2)
        expected = public_positions(sales)

        async def carried() -> bool | None:
            return await stream_positions(nc) == expected or None

        await eventually(carried)
        assert relay.stats.republished_from is not None
    finally:
        stop.set()
        await running


async def stream_positions(nc: Client) -> list[int]:
    """The log positions the relay's messages on the stream carry, in stream order."""
    heads = [
        wire.relayed_head("sales", m.headers.get(wire.MSG_ID), m.data) for m in await read_all(nc)
    ]
    return [h.logposition for h in heads if not isinstance(h, str) and h.logposition]


async def test_a_forged_position_past_the_log_names_the_message_to_remove(
    sales: Sales, nc: Client
) -> None:
    """A message in the relay's form exactly that names a log position past the log's
    head stopped the relay with 'the stream was written from another log', naming no
    message: the remedy for a forgery (remove that message) was not said."""
    place_orders(sales, 2, cancel_every=2)
    await relay_all(sales, nc)
    subject, body, headers = relayed("sales", 10**6, "sales.OrderCancelled", {})
    forged = (await nc.jetstream().publish(subject, body, headers=headers)).seq
    place_orders(sales, 1, cancel_every=2)
    with pytest.raises(RelayError) as stopped:
        async with asyncio.timeout(10):
            await Relay(sales, nc, retry_delay=0.01).run(until_head=True)
    assert f"(sequence {forged}, Nats-Msg-Id sales:1000000)" in str(stopped.value)
    assert f"remove it (nats stream rmm sales {forged})" in str(stopped.value)
    await nc.jetstream().delete_msg("sales", forged)
    await relay_all(sales, nc)
    assert await stream_positions(nc) == public_positions(sales)


async def test_events_carried_again_after_a_handover_to_slice_workers_are_not_applied_twice(
    sales: Sales, nc: Client, data_dir: Path
) -> None:
    """One worker applied everything, then handed the model to slice workers (found with
    partition workers, whose handover slice workers do the same way); the stream lost its
    last two events and the relay carried them again. The handover dropped the log
    position the one worker had passed (which keeps events carried again from being
    applied twice), so their slice applied them again: billing's charges failed on their
    key and were parked (an additive model counts them twice)."""
    place_orders(sales, 4, cancel_every=9)
    head = await relay_all(sales, nc)
    await project_all(Accounts(), data_dir, nc)  # one worker: everything applied
    js = nc.jetstream()
    for sequence in (head - 1, head):
        await js.delete_msg("sales", sequence)
    with home_of(data_dir, "billing") as home:
        await project_slices(home, nc, range(64))  # the handover: cut into slices here
        await relay_all(sales, nc)  # the two lost events again
        done = await project_slices(home, nc, range(64))
        assert (done.applied, done.dead_lettered) == (0, 0)  # each known: duplicates
        with home.reader() as db:
            assert db is not None
            assert read_dead_letters(db) == []
            assert len(tables.epochs(db, "sales")) == 1


class _Holding:
    """Leases that give a worker the slices named, for as long as it runs."""

    def __init__(self, slices: Iterable[int]) -> None:
        self.held = frozenset(slices)

    def holds(self, slice_: int) -> bool:
        return True


async def project_slices(home: ReadModelHome, nc: Client, slices: Iterable[int]) -> BatchResult:
    """Apply the whole stream for billing's ``slices`` (64 in all), as the worker holding
    them does (cutting the model into slices first if need be)."""
    store = SlicedStore(home.live(), Accounts(), 64)
    worker = SliceWorker(Accounts(), store, nc, _Holding(slices))  # type: ignore[arg-type]
    try:
        await worker._join("sales")
        store.hold("sales", frozenset(slices))
        worker.reading_from["sales"] = 1
        batch = await read_all(nc)
        done = await worker._store_apply(Accounts.translators[0], batch, asyncio.Event())
        assert done is not None
        return done
    finally:
        store.close()


async def test_another_publishers_message_between_two_runs_of_the_relay_loses_no_event(
    sales: Sales, nc: Client
) -> None:
    """One message of another publisher on the stream while the relay rested: its next
    run's first message (expecting the sequence that message took) was refused, and the
    second, finding the sequence it expected, was stored; the refusal asked for no
    acknowledgement, so the relay went on with a gap in the stream, counting the lost
    event as published."""
    place_orders(sales, 1, cancel_every=2)
    relay = Relay(sales, nc, retry_delay=0.05)
    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop))
    try:
        await wait_for(lambda: relay.idle and relay.stats.published == 3)
        await nc.jetstream().publish("sales.order.x.OrderCancelled", b"not the relay's")
        place_orders(sales, 3, cancel_every=9)  # one run of several messages
        expected = public_positions(sales)

        async def carried() -> bool | None:
            return await stream_positions(nc) == expected or None

        await eventually(carried)
    finally:
        stop.set()
        await running


async def test_status_names_a_copy_of_an_earlier_event_that_stops_the_relay(
    nc: Client, data_dir: Path
) -> None:
    """A copy of the relay's first message under another id stops the relay ('repeats
    log position'); status took it for the relay's last message, since it agrees with
    the log: relayed_to went back to the copy's position, the events after it counted as
    lag, and no problem was named. (On the SQLite log: status reads the relay's lag there.)"""
    sales = Sales(data_dir=data_dir)
    try:
        place_orders(sales, 2, cancel_every=2)
        await relay_all(sales, nc)
        first = (await read_all(nc))[0]
        copied = await nc.jetstream().publish(
            first.subject, first.data, headers={wire.MSG_ID: "sales@7:1"}
        )
        with pytest.raises(RelayError, match="repeats log position 1"):
            await Relay(sales, nc, retry_delay=0.01).run(until_head=True)
        said = await collect(system, Settings(data_dir=data_dir), nc)
        relay = said["contexts"]["sales"]
        assert (relay["relayed_to"], relay["relay_lag"]) == (public_positions(sales)[-1], 0)
        assert any(f"nats stream rmm sales {copied.seq}" in p for p in relay.get("problems", []))
    finally:
        sales.close()


async def test_billing_slice_workers_count_a_charge_applied_before_its_account(
    sales: Sales, nc: Client, data_dir: Path
) -> None:
    """Slice workers apply each aggregate in its order, but not one aggregate before
    another: the worker of an order's slice may raise its charge before the worker of
    its customer's opens the account. Billing added the charge to the account with an
    UPDATE, which found no account then: the amount owed was lost for good (found with
    partition workers)."""
    while True:  # a customer and an order in two different slices
        customer = sales.register_customer("Ann", "ann@example.com")
        order = sales.place_order(customer, [{"sku": "tea", "quantity": 3, "unit_price": "2.50"}])
        if slice_of(str(customer), 64) != slice_of(str(order), 64):
            break
    await relay_all(sales, nc)
    with home_of(data_dir, "billing") as home:
        for key in (order, customer):  # the order's slice first
            await project_slices(home, nc, [slice_of(str(key), 64)])
        with home.reader() as db:
            assert db is not None
            row = db.execute(
                "SELECT holder, owed_cents, open_charges FROM account WHERE account_id = ?",
                (str(customer),),
            ).fetchone()
    assert tuple(row) == ("Ann", 750, 1)


async def test_status_says_how_far_the_relay_got_behind_two_forgeries(
    nc: Client, data_dir: Path
) -> None:
    """Two messages in the relay's form exactly that the log contradicts, one after the
    other: status looked only at the last two of the relay's form and said it had
    carried nothing (relayed_to 0, every public event counted as lag)."""
    sales = Sales(data_dir=data_dir)
    try:
        place_orders(sales, 2, cancel_every=2)
        await relay_all(sales, nc)
        for position in (100, 101):
            subject, body, headers = relayed("sales", position, "sales.OrderCancelled", {})
            await nc.jetstream().publish(subject, body, headers=headers)
        said = await collect(system, Settings(data_dir=data_dir), nc)
        relay = said["contexts"]["sales"]
        assert (relay["relayed_to"], relay["relay_lag"]) == (public_positions(sales)[-1], 0)
    finally:
        sales.close()
