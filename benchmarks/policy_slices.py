"""Policy slices: shipping's ``ship-orders`` policy catching up on sales' stream as 1, 2
and 4 ``toolkit react ship-orders --once`` workers sharing its 64 slices, beside the
whole policy run by one reactor, on a PostgreSQL log.

    python -m benchmarks.policy_slices [--orders N] [--workers 1 2 4] [--quick]

The workload: sales' stream of ``N`` orders (``benchmarks.relay.sales_stream``: ten
customers, an ``OrderPlaced`` an order), to which shipping's policy reacts by requesting
a shipment (``Shipping.request_shipment``: one aggregate read, one ``Shipment.Requested``
stored), its log in a fresh PostgreSQL database each run (``PERSISTENCE_MODULE=
eventsourcing.postgres``). The baseline is the whole policy, one ``toolkit react
ship-orders --once`` process of a system whose policy declares no slices (:data:`whole`);
the contenders are a system whose policy declares ``slices = 64`` (:data:`sliced`), run
as 1, 2 and 4 ``toolkit react ship-orders --once`` processes started together. Each run
is timed from the first process's "reacting with" line (connected, lock or leases
asked for), and in another column from the last one's, until every tracking record
(``ship-orders:sales``, or each slice's ``ship-orders:sales#<k>``) is at the stream's
head, read from the log by one query every 50 ms; the processes then exit 0 (``--once``
returns once every slice is at the head it saw at its start). Each worker's CPU seconds
are from ``wait4`` (the kernel's count at its exit), less what it had used by its
"reacting with" line (imports, connecting). Then the log is checked: one
``Shipment.Requested`` for each ``OrderPlaced`` in the stream, the same ids (a
shipment's id is its order's), none twice, nothing else stored.

How it scales. Every worker reads and decodes the whole stream (one consumer each),
translates and reacts to its share of it, and stores the reactions to a run of messages
of its slices with the moves of their tracking records in one transaction of the
context's log (each record fenced: moved only from where this worker last saw it). So
a worker's CPU is about ``E * (r + a / N)`` for ``E`` events, as a projection's workers'
(``benchmarks.slices``), and the reactions are PostgreSQL transactions: a reaction
reads its aggregate and inserts its event, and the fenced records are updated, one row
a slice in a run. The log's write throughput, not the workers, bounds the rate once
the CPU is there. On this machine's two cores, nats-server and PostgreSQL share them
with the workers: a second worker has no core of its own. A worker gets its share of
the slices at the others' next lease round (every ``ttl / 3``, 2 s by default), so a
short catch-up is mostly done by the first worker to hold the slices.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import ClassVar, cast
from uuid import UUID

import psycopg
from eventsourcing.postgres import PostgresProcessRecorder
from eventsourcing.utils import get_topic
from nats.aio.client import Client
from psycopg import sql
from rich.console import Console
from rich.table import Table

from benchmarks.relay import sales_stream
from contexts.shipping import Shipment, Shipping
from contexts.shipping.policy import ShipPlacedOrders
from toolkit import System
from toolkit.wire.subjects import decode_token

ROOT = Path(__file__).resolve().parent.parent
SLICES = 64
POLICY = "ship-orders"
STREAM = "sales"
ADMIN = "host=127.0.0.1 port=5432 dbname=postgres user=postgres"
POLL = 0.05
BASELINE = f"toolkit react {POLICY}: the whole policy (baseline)"
REQUESTED = get_topic(Shipment.Requested)


class ShipOrdersInSlices(ShipPlacedOrders):
    """Shipping's policy cut into 64 slices (the only difference)."""

    slices: ClassVar[int | None] = SLICES


whole = System(contexts={"shipping": Shipping}, policies={POLICY: ShipPlacedOrders})
"""What the baseline's process loads (``--system benchmarks.policy_slices:whole``)."""
sliced = System(contexts={"shipping": Shipping}, policies={POLICY: ShipOrdersInSlices})
"""What the workers load (``--system benchmarks.policy_slices:sliced``)."""


def workers_name(n: int) -> str:
    return f"{n} x toolkit react {POLICY} ({SLICES} slices)"


# -- PostgreSQL -------------------------------------------------------------------------


@contextlib.contextmanager
def fresh_log() -> Iterator[dict[str, str]]:
    """A new database on the local server for shipping's log, dropped afterwards: the
    environment that selects it (eventsourcing's variables)."""
    name = f"bench_policy_slices_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": name,
            "POSTGRES_HOST": "127.0.0.1",
            "POSTGRES_PORT": "5432",
            "POSTGRES_USER": "postgres",
            "POSTGRES_PASSWORD": "",
        }
    finally:
        with psycopg.connect(ADMIN, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class Records:
    """The policy's tracking records in shipping's log, read in one query."""

    def __init__(self, shipping: Shipping, env: dict[str, str], names: list[str]) -> None:
        recorder = cast(PostgresProcessRecorder, shipping.recorder)
        self.table = (recorder.datastore.schema, recorder.tracking_table_name)
        self.names = names
        dsn = f"host=127.0.0.1 port=5432 dbname={env['POSTGRES_DBNAME']} user=postgres"
        self.db = psycopg.connect(dsn, autocommit=True, connect_timeout=5)

    def positions(self) -> list[int]:
        query = sql.SQL(
            "SELECT notification_id FROM {}.{} WHERE application_name = ANY(%s)"
        ).format(*map(sql.Identifier, self.table))
        return [int(row[0]) for row in self.db.execute(query, (self.names,))]

    def at(self, head: int) -> bool:
        found = self.positions()
        return len(found) == len(self.names) and min(found) >= head

    def close(self) -> None:
        self.db.close()


@contextlib.contextmanager
def shipping_log(env: dict[str, str], folder: Path) -> Iterator[Shipping]:
    """Shipping on ``env``'s log, its tables made here before any worker starts (workers
    creating them at once can collide on PostgreSQL's catalogue)."""
    shipping = Shipping(env=env, data_dir=folder)
    try:
        yield shipping
    finally:
        shipping.close()


# -- processes --------------------------------------------------------------------------


class Worker:
    """A ``toolkit`` CLI process started and reaped here (``posix_spawn``, ``wait4``),
    so that its CPU time is the kernel's count at its exit; its stderr is kept, and
    ``ready`` is when it said it was reacting."""

    def __init__(self, args: list[str], *, nats_url: str, data_dir: Path, env: dict[str, str]):
        self.command = [sys.executable, "-m", "toolkit", "--data-dir", str(data_dir)]
        self.command += ["--nats-url", nats_url, *args]
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        self.env = {**os.environ, **env, "PYTHONPATH": path}
        self.pid = 0
        self.lines: list[str] = []
        self.ready: float | None = None
        self.cpu_at_ready = 0.0
        self.returncode: int | None = None
        self.cpu = 0.0
        """CPU seconds from its "reacting with" line to its exit."""
        self._ready = asyncio.Event()
        self._draining: asyncio.Task[None] | None = None

    async def start(self) -> None:
        read_fd = self._spawn()
        reader = asyncio.StreamReader()
        await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", 0)
        )
        self._draining = asyncio.create_task(self._drain(reader))

    def _spawn(self) -> int:
        """Start the process, its stderr the write end of a pipe: the read end."""
        read_fd, write_fd = os.pipe()  # (both close on exec; 2 is a copy that does not)
        try:
            self.pid = os.posix_spawn(
                sys.executable,
                self.command,
                self.env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                    (os.POSIX_SPAWN_DUP2, write_fd, 2),
                ],
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        return read_fd

    async def _drain(self, reader: asyncio.StreamReader) -> None:
        async for raw in reader:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            if "reacting with" in line and self.ready is None:
                self.ready = time.monotonic()
                with contextlib.suppress(OSError):
                    self.cpu_at_ready = self._cpu_so_far()
                self._ready.set()

    def _cpu_so_far(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def exited(self) -> bool:
        """Whether it has exited (reaping it, its CPU time kept, if it just did)."""
        if self.returncode is None and self.pid:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                self.cpu = usage.ru_utime + usage.ru_stime - self.cpu_at_ready
        return self.returncode is not None

    async def until_ready(self, within: float = 60) -> float:
        deadline = time.monotonic() + within
        while self.ready is None:
            if self.exited() or time.monotonic() > deadline:
                raise RuntimeError(f"{self.command[5:]} did not start: {self.tail()}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), POLL)
        return self.ready

    async def wait(self, within: float) -> int:
        deadline = time.monotonic() + within
        while not self.exited():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.command[5:]} still running: {self.tail()}")
            await asyncio.sleep(POLL)
        if self._draining is not None:
            await self._draining
        assert self.returncode is not None
        return self.returncode

    async def stop(self) -> None:
        """SIGTERM (SIGKILL 30 s later) unless it has exited; reaped either way."""
        if not self.pid or self.exited():
            return
        os.kill(self.pid, signal.SIGTERM)
        try:
            await self.wait(30)
        except TimeoutError:
            os.kill(self.pid, signal.SIGKILL)
            await self.wait(30)

    def reacted(self) -> int | None:
        """Messages it reacted to, from its last line (None: not said)."""
        said = re.search(rf"{POLICY}: (\d+) reacted", " ".join(self.lines))
        return int(said.group(1)) if said else None

    def tail(self) -> str:
        return " | ".join(self.lines[-5:]) or "(nothing on stderr)"


# -- a run ------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    processes: int
    seconds: float
    """From the first process's "reacting with" line until every record at the head."""
    seconds_from_last: float
    cpu: list[float] = field(default_factory=list)
    """Each process's CPU seconds."""
    reacted: list[int | None] = field(default_factory=list)
    """Messages each process reacted to."""
    shipments: int = 0
    exactly_once: bool = False
    """One ``Shipment.Requested`` for each order in the stream, none twice, nothing else."""
    problem: str = ""


async def placed_orders(nc: Client) -> set[UUID]:
    """The orders placed in sales' stream (from the subjects of its OrderPlaced)."""
    info = await nc.jetstream().stream_info(STREAM, subjects_filter="sales.order.*.OrderPlaced")
    subjects = info.state.subjects or {}
    assert all(count == 1 for count in subjects.values()), "an order placed twice"
    return {UUID(decode_token(subject.split(".")[2])) for subject in subjects}


def check(shipping: Shipping, orders: set[UUID]) -> tuple[int, bool, str]:
    """Shipments stored, whether each order has exactly one, and what is wrong if not."""
    stored = shipping.recorder.select_notifications(start=1, limit=2 * len(orders) + 1000)
    topics = Counter(n.topic for n in stored)
    requested = [n.originator_id for n in stored if n.topic == REQUESTED]
    ids = {UUID(str(i)) for i in requested}
    problems = []
    if len(ids) != len(requested):
        problems.append(f"{len(requested) - len(ids)} shipments requested twice")
    if ids != orders:
        problems.append(
            f"{len(orders - ids)} orders without a shipment, {len(ids - orders)} unknown"
        )
    if set(topics) - {REQUESTED}:
        problems.append(f"other events stored: {dict(topics)}")
    return len(requested), not problems, "; ".join(problems)


async def react(n: int | None, nc: Client, head: int, orders: set[UUID], folder: Path) -> Result:
    """The whole policy in one process (``n`` None), or ``n`` workers of its slices."""
    assert nc.connected_url is not None
    policy = ShipPlacedOrders() if n is None else ShipOrdersInSlices()
    names = (
        [policy.tracking_name(STREAM)]
        if n is None
        else [policy.slice_tracking_name(STREAM, k) for k in range(SLICES)]
    )
    system = f"benchmarks.policy_slices:{'whole' if n is None else 'sliced'}"
    args = ["--system", system, "react", POLICY, "--once"]
    with fresh_log() as env, shipping_log(env, folder) as shipping:
        records = Records(shipping, env, names)
        workers = [
            Worker(args, nats_url=nc.connected_url.geturl(), data_dir=folder, env=env)
            for _ in range(n or 1)
        ]
        try:
            for worker in workers:
                await worker.start()
            starts = [await w.until_ready() for w in workers]
            deadline = time.monotonic() + 120 + head / 200
            while not records.at(head):
                failed = [w for w in workers if w.exited() and w.returncode != 0]
                if failed or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{n or 'the whole'} policy's records not at the head {head} "
                        f"(at {sorted(records.positions())[:3]}...): "
                        + " / ".join(w.tail() for w in workers)
                    )
                await asyncio.sleep(POLL)
            finished = time.monotonic()
            codes = [await w.wait(60) for w in workers]
        finally:
            records.close()
            for worker in workers:
                await worker.stop()
        if any(codes):
            raise RuntimeError(f"exit codes {codes}: " + " / ".join(w.tail() for w in workers))
        shipments, once, problem = check(shipping, orders)
    return Result(
        BASELINE if n is None else workers_name(n),
        n or 1,
        finished - min(starts),
        finished - max(starts),
        [w.cpu for w in workers],
        [w.reacted() for w in workers],
        shipments,
        once,
        problem,
    )


@contextlib.asynccontextmanager
async def stream(folder: Path, orders: int) -> AsyncIterator[tuple[Client, int, set[UUID]]]:
    async with sales_stream(folder / "sales", orders) as (nc, head):
        yield nc, head, await placed_orders(nc)


async def measure(
    orders: int, folder: Path, workers: Sequence[int] = (1, 2, 4)
) -> tuple[int, list[Result]]:
    """The stream's head, and the baseline's result then each count of workers'."""
    results = []
    async with stream(folder, orders) as (nc, head, placed):
        assert len(placed) == orders, (len(placed), orders)
        for i, n in enumerate([None, *workers]):
            results.append(await react(n, nc, head, placed, folder / f"run-{i}"))
    return head, results


# -- report -----------------------------------------------------------------------------


def report(orders: int, head: int, results: list[Result]) -> Table:
    base = head / results[0].seconds
    table = Table(
        title=f"{POLICY} catching up on {orders:,} orders ({head:,} events), log in PostgreSQL"
    )
    for column in (
        "reactor", "seconds", "events/s", "ratio to baseline", "events/s from the last start",
        "CPU s (each process)", "reacted (each process)", "a shipment an order, once",
    ):  # fmt: skip
        table.add_column(column, justify="left" if column == "reactor" else "right")
    for r in results:
        rate = head / r.seconds
        table.add_row(
            r.name,
            f"{r.seconds:.2f}",
            f"{rate:,.0f}",
            f"{rate / base:.2f}",
            f"{head / r.seconds_from_last:,.0f}",
            " ".join(f"{c:.1f}" for c in r.cpu),
            " ".join("?" if c is None else f"{c:,}" for c in r.reacted),
            f"yes ({r.shipments:,})" if r.exactly_once else f"NO: {r.problem}",
        )
    table.caption = (
        f"{os.cpu_count()} cores shared with nats-server and PostgreSQL, Python "
        f"{sys.version.split()[0]}, nats-py {version('nats-py')}, eventsourcing "
        f"{version('eventsourcing')}, psycopg {version('psycopg')}; a fresh database a run"
    )
    return table


def scaling_text(head: int, results: list[Result]) -> str:
    """How the workers did against the whole policy, and why (a note)."""
    base = results[0]
    parts = [
        f"The whole policy reacted at {head / base.seconds:,.0f} events/s using "
        f"{sum(base.cpu):.1f} CPU seconds ({sum(base.cpu) / head * 1e6:.0f} µs an event)."
    ]
    for r in results[1:]:
        shares = [c for c in r.reacted if c]
        parts.append(
            f"{r.processes} worker{'s' if r.processes > 1 else ''}: "
            f"{head / r.seconds / (head / base.seconds):.2f} of it, {sum(r.cpu):.1f} CPU "
            f"seconds in all ({sum(r.cpu) / max(sum(base.cpu), 1e-9):.1f} times the "
            f"whole policy's), {len(shares)} of them reacting."
        )
    parts.append(
        "Every worker reads and decodes the whole stream and reacts to its share; each "
        "reaction is a PostgreSQL transaction's work (an aggregate read, an insert, the "
        "fenced moves of the slices' records), so the log's write throughput, and on two "
        "cores shared with nats-server and PostgreSQL the CPU, bound the rate; a worker "
        "gets its share at the others' next lease round (2 s by default)."
    )
    return " ".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.policy_slices")
    parser.add_argument("--quick", action="store_true", help="2,000 orders")
    parser.add_argument("--orders", type=int, help="orders in sales' stream (20,000)")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2, 4], help="worker counts (1 2 4)"
    )
    args = parser.parse_args(argv)
    orders = args.orders or (2000 if args.quick else 20_000)
    console = Console(width=150)
    with tempfile.TemporaryDirectory(prefix="bench-policy-slices-") as folder:
        head, results = asyncio.run(measure(orders, Path(folder), args.workers))
    console.print(report(orders, head, results))
    console.print(scaling_text(head, results))


if __name__ == "__main__":
    main()
