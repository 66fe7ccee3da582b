"""Leases on NATS (toolkit.nats.leases): every slice held by exactly one live worker,
slices moving when a worker joins, stops or dies, and an expired holder unable to renew."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

from tests.conftest import wait_for
from toolkit.nats.connection import Connection
from toolkit.nats.leases import LeaseGroup, _keys, holders, open_bucket

pytestmark = pytest.mark.timeout(60)

TTL = 1.5


class _Dying(LeaseGroup):
    """A worker that dies as SIGKILL would end it: it gives nothing back."""

    async def _give_back(self) -> None:
        self._set_held(frozenset())


def _shares(workers: list[LeaseGroup], slices: int) -> bool:
    """Every slice held by exactly one of ``workers``, and their shares within one."""
    held = [w.held for w in workers]
    union = frozenset().union(*held)
    return (
        sum(map(len, held)) == slices == len(union)
        and max(map(len, held)) - min(map(len, held)) <= 1
    )


async def test_slices_are_shared_and_move_when_a_worker_joins_stops_or_dies(nc: Client) -> None:
    connection = Connection.of(nc)
    slices = 16
    stops: dict[str, asyncio.Event] = {}
    tasks: dict[str, asyncio.Task[None]] = {}

    def start(name: str, kind: type[LeaseGroup] = LeaseGroup) -> LeaseGroup:
        group = kind(connection, "projection.test", slices, ttl=TTL, worker=name)
        stops[name] = asyncio.Event()
        tasks[name] = asyncio.create_task(group.run(stops[name]))
        return group

    try:
        a = start("a")
        await wait_for(lambda: len(a.held) == slices, within=10)
        b, c = start("b"), start("c", _Dying)
        await wait_for(lambda: _shares([a, b, c], slices), within=10)

        stops["b"].set()  # stops cleanly: gives its slices back at once
        await tasks["b"]
        loop = asyncio.get_running_loop()
        began = loop.time()
        await wait_for(lambda: _shares([a, c], slices), within=10)
        moved_after_stop = loop.time() - began

        stops["c"].set()  # dies: its leases expire
        await tasks["c"]
        began = loop.time()
        await wait_for(lambda: _shares([a], slices), within=10)
        moved_after_death = loop.time() - began
        # a clean stop moves slices in a round or two; a death after the entries expire
        assert moved_after_stop < TTL * 1.5, moved_after_stop
        assert TTL * 0.5 < moved_after_death < TTL * 3, moved_after_death

        kv = await open_bucket(connection, TTL)
        found = await holders(kv, "projection.test", slices)
        assert {h.holder.worker for h in found if h.holder} == {"a"}
    finally:
        for stop in stops.values():
            stop.set()
        for task in tasks.values():
            with contextlib.suppress(Exception):
                await task


async def test_a_holder_whose_lease_expired_cannot_renew_it(nc: Client) -> None:
    connection = Connection.of(nc)
    stale = LeaseGroup(connection, "projection.stale", 1, ttl=TTL, worker="a-stale")
    kv = await open_bucket(connection, TTL)
    await stale._round(kv)
    assert stale.held == {0}
    # It stops renewing (cut off from NATS) until its lease expires; another takes it.
    other = LeaseGroup(connection, "projection.stale", 1, ttl=TTL, worker="b-other")
    stop = asyncio.Event()
    task = asyncio.create_task(other.run(stop))
    try:
        await wait_for(lambda: other.held == {0}, within=10)
        assert not stale.holds(0)  # by its own clock, before it even hears of it
        await stale._round(kv)  # back, and wanting it: its compare-and-set fails
        assert stale.held == frozenset()
    finally:
        stop.set()
        await task


async def test_a_look_at_the_keys_ends_when_its_end_mark_never_comes(
    nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nats-py marks the end of a look with the entry the server counted last; a lease
    that expires between the count and its delivery takes the mark with it. The look
    must end anyway, with what the bucket holds: a worker whose look waited forever
    stopped renewing its leases (a killed worker's slice test hung on this, 1 in 20)."""
    kv = await nc.jetstream().create_key_value(KeyValueConfig(bucket="look_without_mark"))
    await kv.put("projection.look.s.3", b"a")
    await kv.put("projection.look.w.a", b"a")
    await kv.put("projection.look.w.b", b"b")
    await kv.delete("projection.look.w.b")  # deleted: not a key any more
    watch = KeyValue.watch

    async def watch_losing_the_mark(self: KeyValue, *args: Any, **kwargs: Any) -> Any:
        watcher = await watch(self, *args, **kwargs)
        queue = watcher._updates
        kept = [queue.get_nowait() for _ in range(queue.qsize())]
        for entry in kept:
            if entry is not None:
                queue.put_nowait(entry)
        put = queue.put

        async def put_but_the_mark(entry: Any) -> None:
            if entry is not None:
                await put(entry)

        monkeypatch.setattr(queue, "put", put_but_the_mark)
        return watcher

    monkeypatch.setattr(KeyValue, "watch", watch_losing_the_mark)
    async with asyncio.timeout(10):
        found = await _keys(kv, "projection.look.")
    assert sorted(found) == ["s.3", "w.a"]
