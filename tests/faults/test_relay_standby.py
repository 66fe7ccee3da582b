"""Standby relays (issue 21): any number of ``toolkit relay <context> --standby`` run; one
holds the relay lock and publishes, the others wait and take over when it stops or dies.
And every holder is fenced: one that lost the lock while still running can write nothing
out of order or twice, because the stream's expected-last-sequence chain refuses it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from benchmarks.relay import fill_log
from contexts.sales import Sales
from tests.conftest import POSTGRES, postgres, wait_for
from tests.faults.test_relay_faults import stream_holds
from tests.flow import assert_stream_is_the_log, place_orders, public_positions
from toolkit import Relay
from toolkit.nats.connection import connect
from toolkit.nats.embedded import EmbeddedServer
from toolkit.nats.streams import StreamSpec
from toolkit.write.relay_lock import relay_lease, relay_lock


def _command(data: Path, url: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "toolkit", "--data-dir", str(data), "--nats-url", url, *args]


class _Standbys:
    """``toolkit relay sales --standby`` processes, each with its stderr in a file."""

    def __init__(self, data: Path, url: str, env: dict[str, str]) -> None:
        self.data, self.url, self.env = data, url, env
        self.logs: dict[int, Path] = {}
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        log = self.data.parent / f"standby-{len(self.processes)}.log"
        with log.open("wb") as out:
            command = _command(self.data, self.url, "relay", "sales", "--standby")
            process = subprocess.Popen(command, stdout=out, stderr=out, env=self.env)
        self.processes.append(process)
        self.logs[process.pid] = log
        return process

    def said(self, process: subprocess.Popen[bytes]) -> str:
        return self.logs[process.pid].read_text()

    def active(self) -> subprocess.Popen[bytes] | None:
        """The living process that said it relays (at most one may have)."""
        found = [
            p for p in self.processes if p.poll() is None and "relaying sales log" in self.said(p)
        ]
        assert len(found) <= 1, [self.said(p) for p in found]
        return found[0] if found else None

    def waiting(self) -> list[subprocess.Popen[bytes]]:
        """The living processes that said they stand by, and not yet that they took over."""
        return [
            p
            for p in self.processes
            if p.poll() is None and "standing by" in (said := self.said(p)) and "took" not in said
        ]

    def __str__(self) -> str:
        """What each process said (for a failing condition's message)."""
        return "\n".join(
            f"pid {p.pid} (exit {p.poll()}): {self.said(p)[-2000:]}" for p in self.processes
        )

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            process.wait(20)


@pytest.mark.timeout(120)
async def test_standbys_take_over_when_the_active_relay_is_killed(
    data_dir: Path, nats_server: EmbeddedServer, nc: Client, log_env: dict[str, str]
) -> None:
    """Three standbys; the active one SIGKILLed four times mid-relay (each replaced by a
    new standby): the stream holds each public event of the log once, in log order."""
    sales = Sales(env=log_env, data_dir=data_dir)
    # Enough that each kill lands mid-relay even on a loaded machine: a relay carries some
    # 100k events a second here, and each takeover runs on while the test sees it.
    fill_log(sales, 60_000)
    total = len(public_positions(sales))
    env = {**os.environ, **log_env}
    standbys = _Standbys(data_dir, nats_server.url, env)
    killed_at: list[int] = []
    try:
        for _ in range(3):
            standbys.start()
        try:
            await wait_for(lambda: standbys.active() and len(standbys.waiting()) == 2, within=30)
        except AssertionError:
            raise AssertionError(f"no active relay and two standbys:\n{standbys}") from None
        for _ in range(4):
            active = standbys.active()
            assert active is not None
            held = await stream_holds(nc, 0)  # (0 while the relay has not made the stream)
            await stream_holds(nc, min(held + 100, total))  # a little way into its work
            active.send_signal(signal.SIGKILL)
            active.wait(10)
            killed_at.append((await nc.jetstream().stream_info("sales")).state.messages)
            # Three again (as a supervisor restarts what was killed). On a loaded machine
            # the relay may outrun a standby's start: then whichever asks first takes over.
            standbys.start()
            await wait_for(lambda: standbys.active() is not None, within=30)  # took over
        await stream_holds(nc, total)
        await wait_for(lambda: standbys.active() and len(standbys.waiting()) == 2, within=30)
        relayed = [p for p in standbys.processes if "relaying sales log" in standbys.said(p)]
        assert len(relayed) == 5, [standbys.said(p) for p in standbys.processes]  # each kill
        first = standbys.processes[:3]  # one of which was waiting at the first kill
        assert any("took over: relaying" in standbys.said(p) for p in first), relayed
        for process in standbys.waiting():  # each said once who holds the lock
            assert standbys.said(process).count("standing by: a relay of sales runs (") == 1
        print("stream length at each kill:", killed_at, "of", total)
        assert len([n for n in killed_at if 0 < n < total]) == 4, killed_at  # mid-relay
        await assert_stream_is_the_log(nc, sales)
    finally:
        standbys.stop()
        sales.close()
    for process in standbys.processes:
        assert process.returncode in (0, -signal.SIGKILL), standbys.said(process)


@pytest.mark.timeout(60)
async def test_sigterm_stops_a_waiting_standby_at_once(
    data_dir: Path, nats_server: EmbeddedServer, log_env: dict[str, str]
) -> None:
    sales = Sales(env=log_env, data_dir=data_dir)
    env = {**os.environ, **log_env}
    standbys = _Standbys(data_dir, nats_server.url, env)
    try:
        with relay_lock(sales, "the test"):
            standby = standbys.start()
            await wait_for(lambda: "standing by" in standbys.said(standby), within=30)
            line = standbys.said(standby).strip()
            assert line.startswith("standing by: a relay of sales runs (the test, pid ")
            assert line.endswith("); taking over when it stops")
            assert standby.poll() is None
            sent = time.monotonic()
            standby.send_signal(signal.SIGTERM)
            assert standby.wait(10) == 0, standbys.said(standby)
            assert time.monotonic() - sent < 2.0
    finally:
        standbys.stop()
        sales.close()


@pytest.mark.timeout(60)
async def test_without_standby_a_second_relay_is_still_refused(
    data_dir: Path, nats_server: EmbeddedServer
) -> None:
    sales = Sales(data_dir=data_dir)
    try:
        with relay_lock(sales, "the test"):
            refused = await asyncio.to_thread(
                subprocess.run,
                _command(data_dir, nats_server.url, "relay", "sales"),
                capture_output=True,
                text=True,
                timeout=40,
            )
        assert refused.returncode == 1
        (line,) = refused.stderr.strip().splitlines()
        assert line.startswith("toolkit: error: a relay of sales already runs (the test, pid ")
    finally:
        sales.close()


def _paused_publish(client: Client, after: int) -> tuple[asyncio.Event, asyncio.Event]:
    """Make ``client`` hold its publishes from the ``after``-th on until the returned gate
    opens (the other event says it holds one): a relay frozen mid-publish."""
    paused, gate = asyncio.Event(), asyncio.Event()
    publish: Callable[..., Awaitable[None]] = client.publish
    count = 0

    async def held(*args: Any, **kwargs: Any) -> None:
        nonlocal count
        count += 1
        if count >= after and not gate.is_set():
            paused.set()
            await gate.wait()
        await publish(*args, **kwargs)

    client.publish = held  # type: ignore[method-assign]
    return paused, gate


@pytest.mark.timeout(60)
async def test_a_relay_that_lost_the_lock_writes_nothing(
    data_dir: Path, nats_server: EmbeddedServer, nc: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """The old holder, frozen mid-publish while a new one takes over and relays the log,
    then goes on: ``Nats-Expected-Last-Sequence`` refuses its next message (JetStream
    checks it before the message id, so this holds inside the duplicate window too), and
    the old holder starts over from the stream's tail, where there is nothing left to
    carry; the log grows, both relay it, and whichever publishes second is refused again.
    The stream holds each event once, in log order."""
    sales = Sales(data_dir=data_dir)  # (the fence is the stream's: any log will do)
    place_orders(sales, 300)
    spec = StreamSpec("sales")
    old_client, new_client = await connect(nats_server.url), await connect(nats_server.url)
    paused, gate = _paused_publish(old_client, after=40)
    old = Relay(sales, old_client, stream=spec, window=20, ack_every=5, retry_delay=0.05)
    stop = asyncio.Event()
    caplog.set_level(logging.WARNING, "toolkit.write.relay")
    running = asyncio.create_task(old.run(stop))
    try:
        await asyncio.wait_for(paused.wait(), 10)
        held_at = (await nc.jetstream().stream_info("sales")).state.messages
        new = await Relay(sales, new_client, stream=spec).run(until_head=True)
        assert new.stream_sequence == len(public_positions(sales)) > held_at
        gate.set()
        await wait_for(lambda: old.idle and old.lag() == 0, within=20)
        place_orders(sales, 30)  # both go on: the log grows under two relays
        await asyncio.wait_for(Relay(sales, new_client, stream=spec).run(until_head=True), 20)
        await wait_for(lambda: old.idle and old.lag() == 0, within=20)
        stop.set()
        await asyncio.wait_for(running, 20)
        refusals = [
            r.getMessage() for r in caplog.records if "wrong last sequence" in r.getMessage()
        ]
        assert refusals and old.stats.restarts >= 1, caplog.text
        assert "starting over from the stream" in refusals[0]
        await assert_stream_is_the_log(nc, sales)
    finally:
        gate.set()
        stop.set()
        with contextlib.suppress(Exception):
            await running
        await old_client.close()
        await new_client.close()
        sales.close()


@pytest.mark.timeout(60)
async def test_a_postgres_lease_whose_session_ends_is_lost_to_the_standby(data_dir: Path) -> None:
    """On PostgreSQL a holder can lose its lock while it runs (its session ended): the
    standby takes it, and the holder's lease says it is lost, naming the new holder."""
    schema = f"t_{os.urandom(6).hex()}"
    with postgres("test", "the postgres log") as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            **POSTGRES,
            "POSTGRES_SCHEMA": schema,
        }
        first, second = (Sales(env=env, data_dir=data_dir) for _ in range(2))
        stop = asyncio.Event()
        try:
            async with relay_lease(first, "first", stop) as lease:
                assert lease is not None
                waited: list[str] = []
                standing = relay_lease(second, "second", stop, standby=True, waiting=waited.append)
                taking = asyncio.create_task(standing.__aenter__())
                await wait_for(lambda: bool(waited))
                assert waited[0].startswith(f"first, pid {os.getpid()} on ")
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name LIKE 'first, pid %'"
                )
                taken = await asyncio.wait_for(taking, 10)
                assert taken is not None and taken.waited
                await asyncio.wait_for(lease.lost.wait(), 10)
                assert lease.holder.startswith("second, pid ")
                await standing.__aexit__(None, None, None)
        finally:
            stop.set()
            first.close()
            second.close()
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("log_env", ["postgres"], indirect=True)
async def test_a_relay_whose_postgres_session_ends_stands_by_once_another_took_over(
    data_dir: Path, nats_server: EmbeddedServer, nc: Client, log_env: dict[str, str]
) -> None:
    """The active relay's lock session is ended under it (as a database restart or a cut
    connection would): the standby takes the lock, the old holder notices within a
    second, says it lost the lock and stands by; the stream stays the log."""
    sales = Sales(env=log_env, data_dir=data_dir)
    place_orders(sales, 20)
    standbys = _Standbys(data_dir, nats_server.url, {**os.environ, **log_env})
    try:
        first = standbys.start()
        await wait_for(lambda: standbys.active() is first, within=30)
        second = standbys.start()
        await wait_for(lambda: standbys.waiting() == [second], within=30)
        with postgres("test", "the postgres log") as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name LIKE %s",
                (f"toolkit relay sales, pid {first.pid} %",),
            )
        await wait_for(lambda: "took over" in standbys.said(second), within=10)
        await wait_for(lambda: "taking over when" in standbys.said(first), within=10)
        said = standbys.said(first)  # lost, and standing by again
        assert f"the relay of sales lost its lock to toolkit relay sales, pid {second.pid}" in said
        assert f"standing by: a relay of sales runs (toolkit relay sales, pid {second.pid}" in said
        place_orders(sales, 20)
        await stream_holds(nc, len(public_positions(sales)))
        await assert_stream_is_the_log(nc, sales)
    finally:
        standbys.stop()
        sales.close()
    assert [p.returncode for p in standbys.processes] == [0, 0]


@pytest.mark.timeout(120)
async def test_relays_of_one_jetstream_log_on_two_hosts_share_a_lease_on_nats(
    tmp_path: Path, nats_server: EmbeddedServer, nc: Client
) -> None:
    """A JetStream log is read by relays on any host: two data folders (two hosts), no
    lock file in common. One takes the lease on NATS and relays; the other stands by,
    saying who holds it; the holder SIGKILLed mid-relay, the other takes over once the
    lease expires, and the stream holds each public event once, in log order."""
    env = {
        **os.environ,
        "PERSISTENCE_MODULE": "toolkit.logs.jetstream",
        "NATS_URL": nats_server.url,
        "TOOLKIT_LEASE_TTL": "1.5",
    }
    hosts = [tmp_path / host / "data" for host in ("a", "b")]
    for data in hosts:
        data.mkdir(parents=True)
    log_env = {k: env[k] for k in ("PERSISTENCE_MODULE", "NATS_URL")}
    sales = Sales(env=log_env, data_dir=hosts[0])
    place_orders(sales, 1_000)  # (a JetStream log stores at most 1,000 events a save)
    a, b = (_Standbys(data, nats_server.url, env) for data in hosts)
    try:
        first = a.start()
        await wait_for(lambda: a.active() is first, within=30)
        second = b.start()
        await wait_for(lambda: "standing by" in b.said(second), within=30)
        assert "its lease on NATS is held: pid " in b.said(second)
        # Orders go on being placed while the holder relays: it dies mid-work.
        placing = asyncio.create_task(asyncio.to_thread(place_orders, sales, 1_500))
        await stream_holds(nc, 1_500)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed_at = (await nc.jetstream().stream_info("sales")).state.messages
        started = time.monotonic()
        await wait_for(lambda: b.active() is second, within=30)
        took = time.monotonic() - started
        assert "took over: relaying sales log" in b.said(second)
        await placing
        total = len(public_positions(sales))
        await stream_holds(nc, total)
        print(f"killed at {killed_at} of {total}; the other host took over in {took:.1f}s")
        assert 0 < killed_at < total
        await assert_stream_is_the_log(nc, sales)
    finally:
        a.stop()
        b.stop()
        sales.close()
    assert second.returncode == 0, b.said(second)
