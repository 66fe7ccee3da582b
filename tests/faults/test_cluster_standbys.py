"""Issue 21's first "done when" for relays: three ``toolkit relay sales --standby``
processes on a three-server JetStream cluster (the stream of three replicas), the sales
log in PostgreSQL (as relays on several hosts would share it). The active relay is
SIGKILLed four times while it relays tens of thousands of events, and the stream's
leader is killed and started again meanwhile: the stream holds each public event of
the log once, in log order."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client

from benchmarks.relay import fill_log
from contexts.sales import Sales
from tests.conftest import Report, wait_for
from tests.faults.test_cluster_faults import cluster, cnc, leader, settled
from tests.faults.test_relay_standby import _Standbys
from tests.flow import assert_stream_is_the_log, public_positions
from toolkit.nats.connection import connect
from toolkit.nats.embedded import EmbeddedCluster

__all__ = ["cluster", "cnc"]  # the fixtures: the module's three-server cluster, a client of it

ORDERS = 20_000
"""With fill_log's notes and customers: 24,010 events in the log, 20,010 of them public."""
KILLS = 4


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
    env = {**os.environ, **log_env, "TOOLKIT_STREAM_REPLICAS": "3"}
    standbys = _Standbys(data_dir, cluster.url, env)
    killed_at: list[int] = []
    victim: str | None = None
    # The test watches the stream through a server other than the one it kills (a client
    # of that one would see nothing until it reconnected): a client of each server.
    watchers: dict[str, Client] = {}

    def watcher() -> Client:
        return next(c for name, c in watchers.items() if name != victim)

    try:
        for name, url in zip(cluster.names, cluster.urls, strict=True):
            watchers[name] = await connect(url)
        fill_log(sales, ORDERS)
        logged = sales.recorder.max_notification_id()
        total = len(public_positions(sales))
        report(f"log: {logged:,} events in PostgreSQL, {total:,} public, written in {at()}")
        step = total // (KILLS + 2)  # kills at about 1/6, 2/6, 3/6, 4/6 of the relay's work
        for _ in range(3):
            standbys.start()
        try:
            await wait_for(lambda: standbys.active() and len(standbys.waiting()) == 2, within=30)
        except AssertionError:
            raise AssertionError(f"no active relay and two standbys:\n{standbys}") from None
        for kill in range(1, KILLS + 1):
            active = standbys.active()
            assert active is not None
            if kill == 3:  # the stream's leader killed mid-relay, between two relay kills
                held = await grown_to(watcher(), kill * step - step // 2)
                victim = await leader(cnc)
                cluster.server(victim).kill()
                report(f"injected: SIGKILL of server {victim} (stream leader) at {held:,}, {at()}")
            held = await grown_to(watcher(), kill * step)
            active.send_signal(signal.SIGKILL)
            active.wait(10)
            killed_at.append(held)
            report(f"injected: SIGKILL of the active relay (pid {active.pid}) at {held:,}, {at()}")
            if kill == 3:
                assert victim is not None
                await cluster.server(victim).start_async()  # back while the next relay takes over
                report(f"injected: server {victim} started again, {at()}")
            standbys.start()  # three again, as a supervisor restarts what was killed
            try:
                await wait_for(lambda: standbys.active() is not None, within=30)  # took over
            except AssertionError:
                raise AssertionError(f"no relay took over:\n{standbys}") from None
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
        assert all(0 < n < total for n in killed_at), killed_at  # each kill mid-relay
        restarts = sum(standbys.said(p).count("starting over") for p in relayed)
        report(
            f"verified: the R3 stream holds {total:,} messages, each public event of the log "
            f"once, in log order (sequence, log position, message id); {len(relayed)} relays "
            f"took turns ({restarts} restarts within them), in {at()}"
        )
    finally:
        standbys.stop()
        sales.close()
        for client in watchers.values():
            await client.close()
        if victim is not None:
            cluster.server(victim).start()
    for process in standbys.processes:
        assert process.returncode in (0, -signal.SIGKILL), standbys.said(process)
