"""Processes and databases die together or under each other: the relay and a projection
SIGKILLed at the same moment, again and again; PostgreSQL restarted under a projection.
Each test prints what it injected and what it verified."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from subprocess import PIPE

import psycopg
import pytest
from nats.aio.client import Client

from benchmarks.relay import fill_log
from contexts.sales import Sales
from projections.billing import Accounts
from tests.conftest import Report, postgres, wait_for
from tests.faults.test_relay_faults import Published, kill_after, stream_holds
from tests.flow import (
    assert_equal_to_a_clean_build,
    assert_stream_is_the_log,
    project_all,
    public_positions,
    relay_orders,
)
from toolkit.config import Settings
from toolkit.nats.embedded import EmbeddedServer
from toolkit.read.projector import Projector
from toolkit.read.store import ReadModelStore
from toolkit.readmodels.backends import open_home
from toolkit.readmodels.sqlite import SQLiteHome
from toolkit.readmodels.tables import dump

pytestmark = pytest.mark.timeout(240)


async def test_relay_and_projection_killed_at_the_same_moment_lose_and_repeat_nothing(
    report: Report,
    data_dir: Path,
    tmp_path: Path,
    nats_server: EmbeddedServer,
    nc: Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sales = Sales(data_dir=data_dir)
    try:
        fill_log(sales, 60_000)
        total = len(public_positions(sales))
    finally:
        sales.close()
    base = [sys.executable, "-m", "toolkit", "--data-dir", str(data_dir)]
    base += ["--nats-url", nats_server.url]
    rng = random.Random(7)
    kills = []
    # (A killed worker's slices move when its leases expire: shortened to keep this fast.)
    monkeypatch.setenv("TOOLKIT_LEASE_TTL", "1")
    published = Published()
    await published.start(nc)
    for kills_left in range(5, 0, -1):
        held = await stream_holds(nc, 0)  # (0 while the relay has not made the stream)
        relay = await asyncio.create_subprocess_exec(*base, "relay", "sales", stderr=PIPE)
        project = await asyncio.create_subprocess_exec(*base, "project", "billing", stderr=PIPE)
        assert relay.stderr is not None and project.stderr is not None
        try:
            await published.grown_by(kill_after(rng, held, total, kills_left))
        finally:
            for process in (relay, project):  # the same moment
                process.send_signal(signal.SIGKILL)
            await asyncio.gather(relay.wait(), project.wait())
        head = (await nc.jetstream().stream_info("sales")).state.last_seq
        kills.append(head)
    report(f"injected: relay and projection SIGKILLed together 5 times, stream heads {kills}")
    for command in (["relay", "sales", "--once"], ["project", "billing", "--once"]):
        finished = await asyncio.create_subprocess_exec(*base, *command, stderr=PIPE)
        _, errors = await asyncio.wait_for(finished.communicate(), 120)
        assert finished.returncode == 0, errors.decode()
    assert len({k for k in kills if k}) >= 3, kills  # progress between the kills

    sales = Sales(data_dir=data_dir)
    try:
        await assert_stream_is_the_log(nc, sales)
        expected = len(public_positions(sales))
    finally:
        sales.close()
    rows = await assert_equal_to_a_clean_build(data_dir, Accounts(), nc, tmp_path / "clean")
    assert sorted(rows["toolkit_checkpoint"]) == sorted((f"sales#{k}", expected) for k in range(64))
    report(f"verified: {expected:,} public events on the stream once each in log order; the "
          "read model equal row by row to a clean build, checkpoint at the head")  # fmt: skip


def restart_postgresql() -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        message = f"cannot restart PostgreSQL: {done.stderr.strip() or done.stdout.strip()}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.mark.postgresql_alone  # no other test (another xdist worker's) uses it meanwhile
@pytest.mark.parametrize("read_models", ["postgres"], indirect=True)
async def test_a_projection_rides_out_postgresql_restarted_under_it(
    report: Report, nc: Client, data_dir: Path, tmp_path: Path, read_models: Settings
) -> None:
    postgres("postgres", "the PostgreSQL restart test").close()
    head = await relay_orders(data_dir, nc, 8000)
    home = open_home(read_models, "billing")
    stop = asyncio.Event()
    try:
        store = ReadModelStore(home.live(), Accounts())
        projector = Projector(Accounts(), store, nc, batch_size=100, transaction_size=200)
        await Projector(Accounts(), store, nc, stop_at=1000).run(until_head=True)
        at = store.checkpoint("sales")
        # The restart lands mid-write, however fast the projector: its next write waits
        # on a lock another connection holds (both are ended by the restart). The write
        # blocks the event loop, so a thread watches for it and restarts the server.
        assert read_models.read_model_url is not None
        url, pid = read_models.read_model_url, store.db.info.backend_pid  # type: ignore[attr-defined]
        locker = psycopg.connect(url, autocommit=True)
        locker.execute("BEGIN")
        locker.execute(f'LOCK TABLE "{store.generation.name}".charge IN EXCLUSIVE MODE')

        def restart_once_it_waits() -> None:
            with psycopg.connect(url, autocommit=True) as watcher:
                waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted AND pid = %s"
                for _ in range(6000):
                    if watcher.execute(waiting, (pid,)).fetchone() != (0,):
                        break
                    time.sleep(0.01)
                else:
                    raise AssertionError("the projector's write never waited on the lock")
            restart_postgresql()

        restarting = asyncio.create_task(asyncio.to_thread(restart_once_it_waits))
        running = asyncio.create_task(projector.run(stop))
        await restarting
        locker.close()
        report(f"injected: PostgreSQL restarted under the projection at checkpoint {at:,}, "
               "a write of it waiting")  # fmt: skip
        await wait_for(lambda: store.checkpoint("sales") == head, within=90)
        stop.set()
        await running
        assert projector.stats.retries >= 1  # it met the restart
        assert projector.stats.parked == 0 and not store.dead_letters()
        faulted = dump(store.db)
        store.close()
    finally:
        stop.set()
        home.close()
    await project_all(Accounts(), tmp_path / "clean", nc)
    with SQLiteHome(tmp_path / "clean", "billing").reader() as reference:
        assert reference is not None
        assert faulted == dump(reference)
    report(f"verified: {head:,} applied once each after {projector.stats.retries} retries, "
          "0 dead letters, equal row by row to a clean SQLite build")  # fmt: skip
