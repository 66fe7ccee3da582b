"""Two ``toolkit work`` processes of one work queue compete for its jobs (one durable
JetStream consumer): each job is done once, except a job a SIGKILLed process had done but
not yet acknowledged; the jobs it held unacknowledged go to the other process once the
queue's ``ack_wait`` passes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from nats.aio.client import Client

from contexts.sales import Sales
from tests.conftest import wait_for
from tests.flow import place_orders, relay_all
from toolkit.nats.embedded import EmbeddedServer
from toolkit.read.reader import StreamMessage
from toolkit.read.workqueue import WorkQueue

JOBS = '''
import asyncio, os, sqlite3
from pathlib import Path
from toolkit import System, WorkQueue

class Jobs:
    """Each placed order is a job of 50 ms, booked when it starts and when it is done."""

    def __init__(self, nats, data_dir):
        self.queue = WorkQueue(
            nats, "sales", "jobs", subjects=["sales.order.*.OrderPlaced"], ack_wait=1.0
        )
        self.book = Path(data_dir) / "jobs.sqlite"

    async def worker(self, name, stop):
        db = sqlite3.connect(self.book, timeout=30, isolation_level=None)
        pid = os.getpid()

        async def do(message):
            db.execute("INSERT INTO job VALUES (?, ?, 'started')", (message.sequence, pid))
            await asyncio.sleep(0.05)
            db.execute("INSERT INTO job VALUES (?, ?, 'done')", (message.sequence, pid))

        try:
            return await self.queue.work(do, stop)
        finally:
            db.close()

system = System(work_queues={"jobs": Jobs})
'''


@pytest.fixture
def log_env() -> dict[str, str]:
    return {}  # the sales log in SQLite


def booked(book: Path) -> list[tuple[int, int, str]]:
    with contextlib.closing(sqlite3.connect(book, timeout=30)) as db:
        return db.execute("SELECT sequence, pid, what FROM job").fetchall()


@pytest.mark.timeout(60)
async def test_a_killed_work_process_leaves_its_jobs_to_the_other(
    nats_server: EmbeddedServer, nc: Client, sales: Sales, data_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "jobs_system.py").write_text(JOBS)
    book = data_dir / "jobs.sqlite"
    with contextlib.closing(sqlite3.connect(book)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE job (sequence INTEGER, pid INTEGER, what TEXT)")
    place_orders(sales, 100)
    await relay_all(sales, nc)
    jobs = 100
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    env |= {"TOOLKIT_SYSTEM": "jobs_system:system", "TOOLKIT_APP_DIR": str(tmp_path)}
    command = [
        sys.executable, "-m", "toolkit", "--nats-url", nats_server.url,
        "--data-dir", str(data_dir), "work", "jobs", "--workers", "2",
    ]  # fmt: skip
    pipe = asyncio.subprocess.PIPE
    started = time.monotonic()
    victim, survivor = [
        await asyncio.create_subprocess_exec(*command, stderr=pipe, env=env) for _ in range(2)
    ]
    try:
        # both working, a third of the jobs done: the victim holds some, unacknowledged
        def both_working() -> bool:
            done = Counter(pid for _, pid, what in booked(book) if what == "done")
            return done[victim.pid] > 0 and done[survivor.pid] > 0 and done.total() >= 30

        await wait_for(both_working, within=30)
        victim.send_signal(signal.SIGKILL)
        await victim.wait()
        killed = time.monotonic()
        before = booked(book)
        await wait_for(lambda: len({s for s, _, w in booked(book) if w == "done"}) == jobs, 30)
        finished = time.monotonic()
    finally:
        for process in (victim, survivor):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(survivor.communicate(), 30)
        await victim.wait()
    assert survivor.returncode == 0, stderr
    rows = booked(book)
    done = Counter(s for s, _, w in rows if w == "done")
    assert len(done) == jobs  # every job done
    by = {(s, pid) for s, pid, w in rows if w == "done"}
    twice = {s for s, n in done.items() if n > 1}
    # a job done twice was done by the victim, which died before acknowledging it
    assert all((s, victim.pid) in by and (s, survivor.pid) in by for s in twice)
    assert len(twice) <= 2 and max(done.values()) <= 2  # its two workers' jobs at most
    # the victim's jobs under way at the kill were redelivered to the survivor
    cut = {s for s, pid, w in before if pid == victim.pid and w == "started"} - {
        s for s, pid, w in before if pid == victim.pid and w == "done"
    }
    assert cut and all((s, survivor.pid) in by for s in cut)
    survived = done.total() - sum(1 for s, pid, w in rows if pid == victim.pid and w == "done")
    assert f"jobs: {survived} done, 0 retried, 0 given up" in stderr.decode()
    print(
        f"2 work processes, {jobs} jobs, one SIGKILLed with {len(cut)} under way: "
        f"{finished - started:.1f}s ({finished - killed:.1f}s from the kill)"
    )


@pytest.mark.timeout(30)
async def test_a_batch_longer_than_ack_wait_stays_with_its_worker(nc: Client, sales: Sales) -> None:
    """A worker fetches ten jobs and does them in turn, 0.15 s each: 1.5 s, three times the
    queue's ack_wait. Those waiting their turn were handed to the other worker meanwhile
    (done twice) until the worker kept them with in-progress acknowledgements."""
    place_orders(sales, 10)
    await relay_all(sales, nc)
    queue = WorkQueue(nc, "sales", "slow", subjects=["sales.order.*.OrderPlaced"], ack_wait=0.5)
    await queue.ensure()
    done: list[tuple[str, int]] = []
    stop = asyncio.Event()

    def worker(name: str) -> Callable[[StreamMessage], Awaitable[None]]:
        async def do(message: StreamMessage) -> None:
            await asyncio.sleep(0.15)
            done.append((name, message.sequence))

        return do

    first = asyncio.create_task(queue.work(worker("first"), stop, batch=10))
    await wait_for(lambda: len(done) > 0, within=10)  # the first holds the ten
    second = asyncio.create_task(queue.work(worker("second"), stop, batch=10))
    await wait_for(lambda: len(done) >= 10, within=10)
    await asyncio.sleep(1.0)  # longer than ack_wait: anything redelivered would be done
    stop.set()
    await asyncio.gather(first, second)
    assert len(done) == 10 and {name for name, _ in done} == {"first"}
    assert len({sequence for _, sequence in done}) == 10
