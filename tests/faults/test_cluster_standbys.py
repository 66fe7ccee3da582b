"""Issue 21's first "done when" for relays: three ``toolkit relay sales --standby``
processes on a three-server JetStream cluster (the stream of three replicas), the sales
log in PostgreSQL (as relays on several hosts would share it). The log grows while they
run; the active relay is SIGKILLed four times mid-relay, and the stream's leader is
killed and started again meanwhile: the stream holds each public event of the log once,
in log order.

Each kill lands provably while events of the log remain unrelayed: the active relay is
frozen first (SIGSTOP: it holds the relay lock, so no other relay publishes), orders are
saved, and only then is it SIGKILLed; the orders saved after it froze are on the stream
at the end. (Timing kills by the stream's length alone let a fast relay carry the whole
log before the kills: once in CI, the stream held all 20,010 events at each of them.)"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client

from benchmarks.relay import new_orders
from contexts.sales import Sales
from tests.conftest import Report, wait_for
from tests.faults.test_cluster_faults import cluster, cnc, leader, settled
from tests.faults.test_relay_standby import _Standbys
from tests.flow import assert_stream_is_the_log, public_positions
from toolkit.nats.connection import connect
from toolkit.nats.embedded import EmbeddedCluster

__all__ = ["cluster", "cnc"]  # the fixtures: the module's three-server cluster, a client of it

KILLS = 4
STEP = 3_000
"""Messages the stream grows by between two kills (the first counted from when the
three relays are arranged)."""
CHUNK = 500
"""Orders a save: the log grows by some 600 events at a time (every fifth order also gets
a private note), 500 of them public."""
AHEAD = 3_000
"""Public events the log is filled ahead of the stream at most: the relay has work to do
at any time, and a stalled relay (a stream leader being chosen) does not leave tens of
thousands to catch up with."""


class _Filler:
    """Saves orders in chunks while relays run, keeping the log up to ``AHEAD`` public
    events ahead of the stream (so each relay has events to carry when it is killed),
    until stopped. ``save()`` saves one more chunk, from any thread (one save at a time)."""

    def __init__(self, sales: Sales) -> None:
        self.sales = sales
        self.orders = 0
        self._saving = threading.Lock()
        self._stopped = False
        self._customers: list[UUID] = []
        self._task: asyncio.Task[None] | None = None

    def save(self) -> None:
        with self._saving:
            if self._stopped:
                return
            self.sales.save(*new_orders(self._customers, self.orders, CHUNK))
            self.orders += CHUNK

    async def _fill(self, watcher: Callable[[], Client]) -> None:
        while True:
            # (shielded: a save under way when the filling is stopped ends before stop does)
            await asyncio.shield(asyncio.to_thread(self.save))
            await grown_to(watcher(), self.public - AHEAD, within=60)

    @property
    def public(self) -> int:
        """Public events saved so far (at least)."""
        return len(self._customers) + self.orders

    def start(self, watcher: Callable[[], Client]) -> None:
        """Fill, watching the stream through ``watcher()``."""
        self._customers = [self.sales.register_customer(f"C{i}", f"c{i}@ex.com") for i in range(10)]
        self._task = asyncio.create_task(self._fill(watcher))

    async def stop(self) -> None:
        """Stop filling; returns once no save is under way and none will be (raises what
        the filling did)."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await asyncio.to_thread(self._stop_saving)

    def _stop_saving(self) -> None:
        with self._saving:
            self._stopped = True


@dataclass
class _Kill:
    """A SIGKILL of the active relay: the log's head when the relay was frozen and when
    it was killed, and how many messages the stream held meanwhile."""

    frozen_head: int
    killed_head: int
    held: int


def _stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped (SIGSTOP taken effect: state T in /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] in "Tt"


async def stream_length(nc: Client) -> int | None:
    """How many messages stream ``sales`` holds: 0 before the relay made it, None while
    the cluster cannot say (a server just killed, a stream leader being chosen). Asked
    with a short timeout: the relay must not run far ahead of what the test sees."""
    try:
        return (await nc.jetstream(timeout=0.25).stream_info("sales")).state.messages
    except nats.js.errors.NotFoundError:
        return 0
    except nats.errors.Error:
        return None


async def grown_to(nc: Client, count: int, within: float = 30.0) -> int:
    """Await until stream ``sales`` holds at least ``count`` messages; returns how many."""
    deadline = asyncio.get_running_loop().time() + within
    held = None
    while (held := await stream_length(nc)) is None or held < count:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"stream sales holds {held} of {count} messages after {within}s")
        await asyncio.sleep(0.005)
    return held


async def behind(nc: Client, filler: _Filler, within: float = 30.0) -> None:
    """Await a moment the stream holds fewer messages than the log public events (the
    relay likely at work on a chunk then)."""
    deadline = asyncio.get_running_loop().time() + within
    while (held := await stream_length(nc)) is None or held >= filler.public:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"stream sales holds {held} of {filler.public} after {within}s")
        await asyncio.sleep(0.002)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("log_env", ["postgres"], indirect=True)
async def test_standby_relays_on_a_cluster_survive_kills_of_the_relay_and_a_server(
    report: Report,
    cluster: EmbeddedCluster,
    cnc: Client,
    data_dir: Path,
    log_env: dict[str, str],
) -> None:
    """Relays take turns (a standby takes over each time the active one is killed), and
    the cluster loses its stream leader mid-relay: nothing lost, nothing twice."""
    started = time.monotonic()

    def at() -> str:
        return f"{time.monotonic() - started:.1f} s"

    sales = Sales(env=log_env, data_dir=data_dir)
    filler = _Filler(sales)
    env = {**os.environ, **log_env, "TOOLKIT_STREAM_REPLICAS": "3"}
    standbys = _Standbys(data_dir, cluster.url, env)
    kills: list[_Kill] = []
    victim: str | None = None
    frozen: subprocess.Popen[bytes] | None = None
    # The test watches the stream through a server other than the one it kills (a client
    # of that one would see nothing until it reconnected): a client of each server.
    watchers: dict[str, Client] = {}

    def watcher() -> Client:
        return next(c for name, c in watchers.items() if name != victim)

    try:
        for name, url in zip(cluster.names, cluster.urls, strict=True):
            watchers[name] = await connect(url)
        for _ in range(3):
            standbys.start()
        try:
            await wait_for(lambda: standbys.active() and len(standbys.waiting()) == 2, within=30)
        except AssertionError:
            raise AssertionError(f"no active relay and two standbys:\n{standbys}") from None
        filler.start(watcher)  # the log grows from now on, while the relays take turns
        report(f"three relays arranged, the log filling from {at()}")
        for kill in range(1, KILLS + 1):
            active = standbys.active()
            assert active is not None
            base = await grown_to(watcher(), 0)
            if kill == 3:  # the stream's leader killed mid-relay, between two relay kills
                held = await grown_to(watcher(), base + STEP // 2)
                victim = await leader(cnc)
                cluster.server(victim).kill()
                report(f"injected: SIGKILL of server {victim} (stream leader) at {held:,}, {at()}")
            await grown_to(watcher(), base + STEP)
            await behind(watcher(), filler)  # (likely mid-way through a chunk, then)
            # Frozen, the relay holds the lock and publishes nothing: what the log gains
            # from now on is still to be relayed when it is killed.
            frozen = active
            active.send_signal(signal.SIGSTOP)
            await wait_for(functools.partial(_stopped, active.pid), within=10)
            frozen_head = sales.recorder.max_notification_id() or 0
            await asyncio.to_thread(filler.save)
            killed_head = sales.recorder.max_notification_id() or 0
            held = await grown_to(watcher(), 0)
            active.send_signal(signal.SIGKILL)
            active.wait(10)
            kills.append(_Kill(frozen_head, killed_head, held))
            report(
                f"injected: SIGKILL of the active relay (pid {active.pid}) at {held:,} "
                f"messages, log head {killed_head:,}, {at()}"
            )
            if kill == 3:
                assert victim is not None
                await cluster.server(victim).start_async()  # back while the next relay takes over
                report(f"injected: server {victim} started again, {at()}")
            standbys.start()  # three again, as a supervisor restarts what was killed
            try:
                await wait_for(lambda: standbys.active() is not None, within=30)  # took over
            except AssertionError:
                raise AssertionError(f"no relay took over:\n{standbys}") from None
        await filler.stop()
        positions = public_positions(sales)
        total = len(positions)
        report(
            f"log: {sales.recorder.max_notification_id():,} events in PostgreSQL, "
            f"{total:,} public ({filler.orders:,} orders), {at()}"
        )
        await grown_to(watcher(), total, within=60)
        try:  # (a standby stopped before it has started would end by SIGTERM's default)
            await wait_for(lambda: standbys.active() and len(standbys.waiting()) == 2, within=30)
        except AssertionError:
            raise AssertionError(
                f"no active relay and two standbys at the end:\n{standbys}"
            ) from None
        await settled(cnc)
        info = await cnc.jetstream().stream_info("sales")
        assert info.config.num_replicas == 3
        relayed = [p for p in standbys.processes if "relaying sales log" in standbys.said(p)]
        assert len(relayed) == KILLS + 1, str(standbys)  # the first, and one after each kill
        took = [p for p in relayed if "took over: relaying" in standbys.said(p)]
        assert len(took) == KILLS, str(standbys)  # each after the one before it was killed
        assert info.state.messages == total
        await assert_stream_is_the_log(cnc, sales)
        # Each kill mid-relay: the stream held some of the log, no more than was logged
        # when the relay froze (none relayed meanwhile), and the log held public events
        # saved after it froze, which it never saw; the stream (the log) holds them now.
        lag: list[str] = []  # events behind when it froze, + saved while frozen
        for k in kills:
            then = bisect.bisect_right(positions, k.frozen_head)  # public events then
            logged = bisect.bisect_right(positions, k.killed_head)
            assert 0 < k.held <= then < logged, kills
            lag.append(f"{then - k.held:,}+{logged - then:,}")
        restarts = sum(standbys.said(p).count("starting over") for p in relayed)
        report(
            f"verified: the R3 stream holds {total:,} messages, each public event of the log "
            f"once, in log order (sequence, log position, message id); {len(relayed)} relays "
            f"took turns ({restarts} restarts within them), each killed with events to carry "
            f"(events behind when it froze + saved while frozen: {', '.join(lag)}), in {at()}"
        )
    finally:
        if frozen is not None and frozen.poll() is None:  # (a failure while it was frozen)
            frozen.kill()
        await filler.stop()
        standbys.stop()
        sales.close()
        for client in watchers.values():
            await client.close()
        if victim is not None:
            cluster.server(victim).start()
    for process in standbys.processes:
        assert process.returncode in (0, -signal.SIGKILL), standbys.said(process)
