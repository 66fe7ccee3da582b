"""Policies cut into slices, on each log (SQLite, PostgreSQL, JetStream): runners holding
different slices share a stream, each message's effects are caused once; a runner that
lost a slice without knowing it has its transaction refused by the fence; a policy that
ran whole is handed over as it is, and a cut cannot change.

The contexts are test_policies'. Each order is counted on a tally of its own (keyed by
the order, so in the order's slice): a reaction caused twice would count it twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import ProcessRecorder

from tests.conftest import wait_for
from tests.integration.test_policies import (
    Depot,
    OrderPlaced,
    Parcels,
    ParcelWanted,
    depot_env,
    open_depot,
    placed,
    unknown,
)
from toolkit.errors import ConfigurationError
from toolkit.nats.connection import Connection, connect
from toolkit.nats.embedded import EmbeddedServer
from toolkit.nats.streams import StreamSpec, ensure_stream
from toolkit.react import PolicyRunner
from toolkit.react.deadletters import PolicyDeadLetters
from toolkit.react.slices import SliceReactor, policy_leases
from toolkit.read.reader import StreamMessage
from toolkit.read.slices import slice_of
from toolkit.testing import relayed_event
from toolkit.wire.subjects import aggregate_token

__all__ = ["depot_env"]

pytestmark = pytest.mark.timeout(60)

SLICES = 4


class SlicedParcels(Parcels):
    """Parcels cut into slices, counting each order on its own tally."""

    slices = SLICES

    def react(self, fact: object, depot: Depot) -> None:
        if isinstance(fact, ParcelWanted):
            depot.pack(fact.order_id, fact.item)
            depot.count(f"order-{fact.order_id}")


class Counting(SlicedParcels):
    """Counts each order only: nothing in the context refuses a second reaction (a second
    parcel of an order would be refused as a conflict), so only the fence can."""

    def react(self, fact: object, depot: Depot) -> None:
        if isinstance(fact, ParcelWanted):
            depot.count(f"order-{fact.order_id}")


class Refused(Exception):
    pass


class FailingParcels(SlicedParcels):
    """Fails on order 'o-fail' (to see a run taken apart)."""

    def react(self, fact: object, depot: Depot) -> None:
        if isinstance(fact, ParcelWanted) and fact.item == "fail":
            raise Refused("no")
        super().react(fact, depot)


@pytest.fixture
def depot(depot_env: dict[str, str], tmp_path: Path) -> Iterator[Depot]:
    context = open_depot(depot_env, tmp_path)
    yield context
    context.close()


def slice_of_order(n: int) -> int:
    return slice_of(f"o{n}", SLICES)


def counts(depot: Depot, orders: range) -> dict[int, int]:
    found = {}
    for n in orders:
        try:
            found[n] = depot.tally(f"order-o{n}")
        except Exception:
            found[n] = 0
    return found


def record(depot: Depot, name: str) -> int | None:
    assert isinstance(depot.recorder, ProcessRecorder)
    return depot.recorder.max_tracking_id(name)


def test_runners_holding_different_slices_cause_each_effect_once(depot: Depot) -> None:
    orders = range(1, 41)
    batch = [placed(n, "tea") for n in orders] + [unknown(41)]
    runners = [PolicyRunner(SlicedParcels(), depot) for _ in range(2)]
    runners[0].tracks.hold(frozenset({0, 1}))
    runners[1].tracks.hold(frozenset({2, 3}))
    done = [r.apply(batch) for r in runners]
    for again in runners:  # delivered again: nothing more
        assert again.apply(batch).reacted == 0
    assert counts(depot, orders) == dict.fromkeys(orders, 1)
    assert done[0].reacted + done[1].reacted == 40
    theirs = [m for m in batch if slice_of(aggregate_token(m.subject), SLICES) in {2, 3}]
    assert done[0].elsewhere == len(theirs)
    mine = [n for n in orders if slice_of_order(n) in {0, 1}]
    assert done[0].reacted == len(mine)
    # each slice's record ends at the stream's last message it saw (41: a type not read)
    for k in range(SLICES):
        assert record(depot, f"parcels:shop#{k}") == 41
    assert record(depot, "parcels:shop#slices") == SLICES
    assert record(depot, "parcels:shop") is None  # the whole policy's record: untouched


def test_a_runner_that_lost_its_slice_is_fenced(depot: Depot) -> None:
    """The old holder read the slices' records, then lost them to a new holder that
    reacted to the first orders; its run of the same orders (one transaction, whose
    record would go past the new holder's) is refused, and it causes nothing twice."""
    orders = range(1, 31)
    batch = [placed(n, "tea") for n in orders]
    old, new = PolicyRunner(Counting(), depot), PolicyRunner(Counting(), depot)
    assert old.position("shop") == 0  # read: every slice at 0, no record yet
    new.apply(batch[:12])
    stats = old.apply(batch)  # stale: thinks every slice is where it read it
    assert counts(depot, orders) == dict.fromkeys(orders, 1)
    assert stats.reacted == 18 and stats.duplicates == 12
    # and once more with records in place (a fence from a value, not from none)
    more = [placed(n, "jam") for n in range(31, 61)]
    old2 = PolicyRunner(Counting(), depot)
    assert old2.position("shop") == 30
    new.apply(more[:10])
    assert old2.apply(more).duplicates == 10
    assert counts(depot, range(1, 61)) == dict.fromkeys(range(1, 61), 1)


def test_a_failing_reaction_in_a_run_of_slices_stores_what_came_before(depot: Depot) -> None:
    runner = PolicyRunner(FailingParcels(), depot)
    batch = [placed(n, "fail" if n == 7 else "tea") for n in range(1, 13)]
    with pytest.raises(Exception, match="sequence 7"):
        runner.apply(batch)
    assert counts(depot, range(1, 7)) == dict.fromkeys(range(1, 7), 1)
    assert counts(depot, range(8, 13)) == dict.fromkeys(range(8, 13), 0)
    assert record(depot, f"parcels:shop#{slice_of_order(7)}") == max(
        [n for n in range(1, 7) if slice_of_order(n) == slice_of_order(7)], default=None
    )


def test_a_whole_policy_is_handed_over_and_a_cut_cannot_change(depot: Depot) -> None:
    PolicyRunner(Parcels(), depot).apply([placed(n, "tea") for n in range(1, 6)])
    assert record(depot, "parcels:shop") == 5
    sliced = PolicyRunner(SlicedParcels(), depot)
    assert sliced.position("shop") == 5  # every slice starts where the policy was
    stats = sliced.apply([placed(n, "tea") for n in range(1, 9)])
    assert stats.duplicates == 5 and stats.reacted == 3
    with pytest.raises(ConfigurationError, match="cut into 4 slices of shop, and cannot run as a"):
        PolicyRunner(Parcels(), depot)

    class Eight(SlicedParcels):
        slices = 8

    with pytest.raises(ConfigurationError, match="cut into 4 slices of shop, and cannot run into"):
        PolicyRunner(Eight(), depot)


def test_slices_are_declared_as_a_whole_number() -> None:
    class Bad(Parcels):
        slices = 0

    with pytest.raises(ConfigurationError, match="slices must be a whole number"):
        Bad()


def test_a_log_that_does_not_fence_is_refused(tmp_path: Path) -> None:
    depot = open_depot(
        {"PROCESS_RECORDER_TOPIC": "eventsourcing.sqlite:SQLiteProcessRecorder"}, tmp_path
    )
    try:
        with pytest.raises(ConfigurationError, match="does not fence tracking records"):
            PolicyRunner(SlicedParcels(), depot)
    finally:
        depot.close()


async def _publish(url: str, orders: range) -> None:
    nc = await connect(url)
    try:
        js = nc.jetstream()
        await ensure_stream(js, StreamSpec("shop"))
        for n in orders:
            event = relayed_event(
                OrderPlaced(order_id=f"o{n}", item="tea"), position=n, aggregate_id=f"o{n}"
            )
            await js.publish(event.subject, event.body, headers=dict(event.headers))
    finally:
        await nc.close()


async def test_workers_share_the_slices_and_take_over_a_stopped_ones(
    nats_server: EmbeddedServer, depot_env: dict[str, str], tmp_path: Path
) -> None:
    """Three workers share the slices by lease while orders come; one stops, the others
    take its slices; every order is reacted to once, and ``--once`` covers every slice."""
    orders = range(1, 121)
    await _publish(nats_server.url, orders[:60])
    depots = [open_depot(depot_env, tmp_path) for _ in range(3)]
    nc = await connect(nats_server.url)
    stops = [asyncio.Event() for _ in depots]
    tasks: list[asyncio.Task[Any]] = []
    try:
        reactors = []
        for i, depot in enumerate(depots):
            dead = PolicyDeadLetters(tmp_path / f"dead-{i}.sqlite")
            policy = SlicedParcels()
            leases = policy_leases(Connection.of(nc), policy, ttl=1.0)
            reactors.append(SliceReactor(PolicyRunner(policy, depot), dead, nc, leases))
        tasks = [asyncio.create_task(r.run(s)) for r, s in zip(reactors, stops, strict=True)]
        await wait_for(lambda: all(r.leases.held for r in reactors), within=20)
        await _publish(nats_server.url, orders[60:90])
        stops[0].set()
        await tasks[0]
        await _publish(nats_server.url, orders[90:])
        await wait_for(
            lambda: all(
                (record(depots[1], f"parcels:shop#{k}") or 0) >= 120 for k in range(SLICES)
            ),
            within=30,
        )
        assert counts(depots[1], orders) == dict.fromkeys(orders, 1)
        assert sum(r.stats.reacted for r in reactors) == 120
        held = [r.leases.held for r in reactors[1:]]
        assert held[0] | held[1] == frozenset(range(SLICES)) and not held[0] & held[1]
    finally:
        for stop in stops:
            stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await nc.close()
        for depot in depots:
            depot.close()


class Strict(Counting):
    """Fails on item 'fail' every time, parked at once: its order's later messages are
    parked behind it."""

    retries = 0

    def react(self, fact: object, depot: Depot) -> None:
        if isinstance(fact, ParcelWanted) and fact.item == "fail":
            raise Refused("no")
        super().react(fact, depot)


async def test_a_worker_gaining_a_slice_knows_what_its_last_worker_parked(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    """Worker B opens the policy's dead letters first; worker A then parks an order
    (its reaction fails) and stops; B takes every slice, and parks that order's later
    message behind it instead of reacting to it out of order."""
    depot = open_depot({}, tmp_path)
    nc = await connect(nats_server.url)
    file = tmp_path / "policies" / "parcels.sqlite"
    try:
        dead_b = PolicyDeadLetters(file)  # opened before A parks anything
        with PolicyDeadLetters(file) as dead_a:
            policy = Strict()
            a = SliceReactor(
                PolicyRunner(policy, depot), dead_a, nc,
                policy_leases(Connection.of(nc), policy, ttl=1.0),
            )  # fmt: skip
            await _publish_items(nats_server.url, [(1, "o1", "fail"), (2, "o2", "tea")])
            await a.run(until_head=True)
            assert a.stats.parked == 1
        b = SliceReactor(
            PolicyRunner(Strict(), depot), dead_b, nc,
            policy_leases(Connection.of(nc), Strict(), ttl=1.0),
        )  # fmt: skip
        await _publish_items(nats_server.url, [(3, "o1", "tea"), (4, "o3", "tea")])
        await b.run(until_head=True)
        assert b.stats.held == 1 and b.stats.reacted == 1  # o1 parked behind its first
        assert counts(depot, range(1, 4)) == {1: 0, 2: 1, 3: 1}
        dead_b.close()
    finally:
        await nc.close()
        depot.close()


async def _publish_items(url: str, orders: list[tuple[int, str, str]]) -> None:
    nc = await connect(url)
    try:
        js = nc.jetstream()
        await ensure_stream(js, StreamSpec("shop"))
        for position, order_id, item in orders:
            event = relayed_event(
                OrderPlaced(order_id=order_id, item=item), position=position, aggregate_id=order_id
            )
            await js.publish(event.subject, event.body, headers=dict(event.headers))
    finally:
        await nc.close()


def test_a_worker_paused_in_a_write_of_the_shared_file_holds_no_other_up(tmp_path: Path) -> None:
    """The workers of a policy share its dead letters' file. One paused (SIGSTOP, a
    stalled VM) inside its write of the positions it reacted to keeps the file's write
    lock: another's write of that hint is left for its next batch (at once, not after
    SQLite's 5 s wait for the lock, which would hold its batches and leases up)."""
    import sqlite3
    import time

    file = tmp_path / "parcels.sqlite"
    with PolicyDeadLetters(file) as mine:
        paused = sqlite3.connect(file, isolation_level=None)
        paused.execute("BEGIN IMMEDIATE")  # the other worker, stopped mid-write
        began = time.monotonic()
        mine.remember({"shop#1": 7})
        assert time.monotonic() - began < 2.0
        assert mine.reacted_to() == {}
        paused.execute("ROLLBACK")
        paused.close()
        mine.remember({"shop#1": 7})
        assert mine.reacted_to() == {"shop#1": 7}


def test_a_strangers_messages_in_a_sliced_policy_are_rejected_in_their_slice(
    depot: Depot,
) -> None:
    """Any publisher may put any bytes under any subject of the stream: a subject with no
    aggregate token, one with wildcard-like and unicode tokens, a body that is no
    envelope. Each is rejected (kept with its reason) in the slice of its subject, and the
    relay's orders around them are reacted to once."""
    strangers = [
        StreamMessage("shop", 2, "shop", {}, b"\x00\xff not an envelope"),
        StreamMessage("shop", 3, "shop.Order.%2A%3E\u00e9.Placed", {"Nats-Msg-Id": "x"}, b"{}"),
        StreamMessage("shop", 4, "shop.a.b.c.d.e", {}, b""),
    ]
    batch = [placed(1, "tea"), *strangers, placed(5, "tea")]
    runner = PolicyRunner(Counting(), depot)
    stats = runner.apply(batch)
    assert (stats.reacted, stats.rejected) == (2, 3)
    assert runner.apply(batch).reacted == 0  # delivered again: nothing more
    assert counts(depot, range(1, 6)) == {1: 1, 2: 0, 3: 0, 4: 0, 5: 1}
    for k in range(SLICES):
        assert record(depot, f"parcels:shop#{k}") == 5
