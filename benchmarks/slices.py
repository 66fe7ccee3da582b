"""Slices: billing's projection run as 1, 2 and 4 ``toolkit project billing`` workers
sharing its 64 slices on a PostgreSQL read model, beside one plain projector; and how
soon a SIGKILLed worker's slices move again.

    python -m benchmarks.slices [--orders N] [--kills K] [--ttl 6 2] [--quick]

Catch-up: sales' stream of ``N`` orders (``benchmarks.relay.fill_log``: ten customers)
projected from sequence 1 into a fresh PostgreSQL database each time. The baseline is
``toolkit replay billing``: one plain projector (the sliced projection rebuilt as one
model, one checkpoint), its rate over the seconds it reports (connected to done). The
workers are real CLI processes started together; a run ends when every slice's
checkpoint (``toolkit_checkpoint``, ``sales#<k>``) has reached the head, timed from the
first worker's "projecting" line (connected, store open), and in another column from the
last one's (the workers start within a second or two of each other on two cores); also
when every worker first held a share of the slices, and the rate from then on. Each
model is compared, row by row, with the baseline's.

How it scales. Every worker reads and decodes the whole stream (one consumer each) and
translates and applies only its share, one transaction a batch for all the slices it
holds; PostgreSQL takes the workers' transactions in parallel. So a worker's CPU a run is
about ``E * (r + a / N)`` for ``E`` events: ``r`` reading, decoding and routing each
message (paid by every worker), ``a`` translating and applying (shared). The workers'
CPU seconds, read from ``/proc`` before they stop, give ``r`` and ``a`` whatever the
cores (when no worker read the stream twice), and with them the rate ``N`` workers reach
with a core each (``1 / (r + a / N)``) and its ceiling ``1 / r``: more workers help only
while ``a / N`` is large beside ``r``. On this machine's two cores, nats-server and
PostgreSQL share them with the workers, so two workers already have no core to spare.
Billing's accounts are few (ten customers in the stream): every batch of every worker
updates the same account rows, so the workers' transactions also queue on those rows.

What else the rate pays here: the leases. A joining worker gets its share when the
others let go at their next lease round (every ``ttl / 3``, 2 s by default). A round
renews each held slice with its own awaited request, on the event loop that also applies
batches synchronously (up to 5,000 events, 0.1-0.5 s each while catching up), so a busy
worker's round takes seconds (3-9.5 s measured for 64 slices) and its renewals come
late: slices it still holds count as not usable (renewed over ``0.75 * ttl`` ago) and
are read again, leases and presence expire, the membership changes and ``k mod n``
moves most slices at once.

SIGKILL: three workers follow the stream while orders are placed (``--rate`` a second,
the relay in this process). One is SIGKILLed; timed from the kill: until every slice it
held is held by a live worker (the ``toolkit_leases`` bucket, ``projection.billing.s.<k>``)
and until each of them has a checkpoint past the stream's head at the kill (applied by
a live worker: the dead one cannot have read what came after), then a new worker is
started, as a supervisor would, and the slices rebalanced before the next kill. At the
end the traffic stops, the workers catch up and stop, and the model is compared row by
row with a clean ``toolkit replay billing``: nothing lost, nothing applied twice.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path
from typing import Any

import orjson
import psycopg
from nats.aio.client import Client
from nats.js.errors import BucketNotFoundError, NotFoundError
from rich.console import Console
from rich.table import Table

from benchmarks.relay import fill_log, sales_stream
from contexts.sales import Sales
from toolkit import Relay, Settings
from toolkit.nats.connection import connect
from toolkit.nats.embedded import EmbeddedServer
from toolkit.nats.leases import BUCKET, holders
from toolkit.readmodels import backends, tables
from toolkit.readmodels.interface import ReadModelHome

ROOT = Path(__file__).resolve().parent.parent
SLICES = 64
"""Billing's slices (``projections.billing.Accounts.slices``)."""
GROUP = "projection.billing"
ADMIN = "host=127.0.0.1 port=5432 dbname=postgres user=postgres"
BASELINE = "toolkit replay billing: one projector (baseline)"
DEFAULT_TTL = 6.0
KILL_GOAL = 10.0
"""Seconds from a worker's SIGKILL to its slices moving again, at the default TTL."""
LINES = [{"sku": "tea", "quantity": 2, "unit_price": Decimal("1.25")}]
POLL = 0.05
HOLDERS_POLL = 0.25
"""Seconds between reads of the leases while catching up (a request a slice)."""


def workers_name(n: int) -> str:
    return f"{n} x toolkit project billing"


# -- PostgreSQL -------------------------------------------------------------------------


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A new database on the local server, dropped afterwards: its URL."""
    name = f"bench_slices_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(ADMIN, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextlib.contextmanager
def billing_home(folder: Path, url: str) -> Iterator[ReadModelHome]:
    home = backends.open_home(Settings(data_dir=folder, read_model_url=url), "billing")
    try:
        yield home
    finally:
        home.close()


def slice_checkpoints(home: ReadModelHome) -> dict[int, int]:
    """Each slice's checkpoint on sales' stream (none before the workers cut it)."""
    with home.reader() as db:
        if db is None:
            return {}
        found = {}
        for key, sequence in tables.checkpoints(db):
            stream, _, k = key.partition("#")
            if stream == "sales" and k:
                found[int(k)] = int(sequence)
        return found


def model(home: ReadModelHome) -> dict[str, list[tuple[Any, ...]]]:
    with home.reader() as db:
        assert db is not None
        return tables.dump(db)


# -- processes --------------------------------------------------------------------------


class Toolkit:
    """A ``toolkit`` CLI process on the benchmark's server and database; its stderr is
    kept, and ``ready`` is when it said it was projecting (connected, store open)."""

    def __init__(self, args: list[str], *, nats_url: str, db_url: str, data_dir: Path, ttl: float):
        self.command = [sys.executable, "-m", "toolkit", "--data-dir", str(data_dir)]
        self.command += ["--nats-url", nats_url, "--read-model-url", db_url, *args]
        self.env = {**os.environ, "TOOLKIT_LEASE_TTL": f"{ttl:g}"}
        self.process: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self.ready: float | None = None
        self.cpu_at_ready = 0.0
        """CPU seconds it had used starting (imports, connecting)."""
        self._ready = asyncio.Event()
        self._draining: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            cwd=ROOT,
        )
        self._draining = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            if line.startswith("projecting") and self.ready is None:
                self.ready = time.monotonic()
                with contextlib.suppress(OSError):
                    self.cpu_at_ready = self.cpu_seconds()
                self._ready.set()

    async def until_ready(self, within: float = 60) -> float:
        waiting = asyncio.ensure_future(self._ready.wait())
        ended = asyncio.ensure_future(self.wait())
        await asyncio.wait({waiting, ended}, timeout=within, return_when="FIRST_COMPLETED")
        waiting.cancel()
        ended.cancel()
        if self.ready is None:
            raise RuntimeError(f"{self.command[5:]} did not start: {self.tail()}")
        return self.ready

    def cpu_seconds(self) -> float:
        """User and system CPU time so far (while it runs)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def wait(self) -> int:
        assert self.process is not None
        code = await self.process.wait()
        if self._draining is not None:
            await self._draining
        return code

    async def output(self) -> bytes:
        assert self.process is not None and self.process.stdout is not None
        out = await self.process.stdout.read()
        await self.wait()
        return out

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.wait(), 30)
            except TimeoutError:
                self.kill()
                await self.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    def tail(self) -> str:
        return " | ".join(self.lines[-5:]) or "(nothing on stderr)"


async def until(condition: Any, within: float, what: str) -> float:
    """Poll ``condition()`` until true; the monotonic time it was seen true."""
    deadline = time.monotonic() + within
    while True:
        if condition():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {within:.0f} s: {what}")
        await asyncio.sleep(POLL)


async def replay(nats_url: str, db_url: str, data_dir: Path) -> tuple[float, int]:
    """``toolkit replay billing`` into ``db_url``: seconds it reports, events applied."""
    cli = Toolkit(
        ["replay", "billing", "--json"],
        nats_url=nats_url, db_url=db_url, data_dir=data_dir, ttl=DEFAULT_TTL,
    )  # fmt: skip
    await cli.start()
    out = await asyncio.wait_for(cli.output(), 900)
    if cli.process is None or cli.process.returncode != 0:
        raise RuntimeError(f"toolkit replay billing failed: {cli.tail()}")
    report = orjson.loads(out.splitlines()[-1])
    return float(report["seconds"]), int(report["checkpoints"]["sales"])


# -- catch-up -------------------------------------------------------------------------


@dataclass
class CatchUp:
    name: str
    processes: int
    seconds: float
    """From the first worker's start (the baseline: as it reports)."""
    seconds_from_last: float
    cpu: list[float] = field(default_factory=list)
    """Each worker's CPU seconds."""
    equal: bool = True
    """The model equals the baseline's, row by row."""
    shared_after: float | None = None
    """Seconds from the first start until every worker held its share of the slices."""
    shared_rate: float | None = None
    """Events/s from then on: the lowest slice's checkpoint then, to the head."""


async def _workers_catch_up(
    n: int, nc: Client, head: int, folder: Path, reference: dict[str, Any]
) -> CatchUp:
    assert nc.connected_url is not None
    with fresh_database() as db_url, billing_home(folder, db_url) as home:
        workers = [
            Toolkit(["project", "billing"], nats_url=nc.connected_url.geturl(), db_url=db_url,
                    data_dir=folder, ttl=DEFAULT_TTL)
            for _ in range(n)
        ]  # fmt: skip
        shared: tuple[float, int] | None = None
        try:
            for worker in workers:
                await worker.start()
            starts = [await w.until_ready() for w in workers]
            pids = {w.pid for w in workers}
            deadline = time.monotonic() + 600 + head / 1000
            asked = 0.0
            while True:
                checkpoints = slice_checkpoints(home)
                if len(checkpoints) == SLICES and min(checkpoints.values()) >= head:
                    finished = time.monotonic()
                    break
                if (
                    shared is None
                    and time.monotonic() > asked + HOLDERS_POLL
                    and set((await _held(nc)).values()) == pids
                ):
                    shared = (time.monotonic(), min(checkpoints.values(), default=0))
                    asked = time.monotonic()
                if time.monotonic() > deadline:
                    found = sorted(checkpoints.values())
                    raise TimeoutError(
                        f"{n} workers not at the head {head} within {deadline:.0f} s: slices' "
                        f"checkpoints {found[:3]}...{found[-3:]}; workers said: "
                        + " / ".join(w.tail() for w in workers)
                    )
                await asyncio.sleep(POLL)
            cpu = [w.cpu_seconds() - w.cpu_at_ready for w in workers]
        finally:
            for worker in workers:
                await worker.stop()
        equal = model(home) == reference
    first = min(starts)
    result = CatchUp(workers_name(n), n, finished - first, finished - max(starts), cpu, equal)
    if shared is not None and finished > shared[0]:
        result.shared_after = shared[0] - first
        result.shared_rate = (head - shared[1]) / (finished - shared[0])
    return result


async def measure_catchup(
    orders: int, folder: Path, counts: tuple[int, ...] = (1, 2, 4)
) -> tuple[int, list[CatchUp]]:
    """The stream's head, and each contender's catch-up to it."""
    results: list[CatchUp] = []
    async with sales_stream(folder, orders) as (nc, head):
        assert nc.connected_url is not None
        url = nc.connected_url.geturl()
        with fresh_database() as db_url, billing_home(folder, db_url) as home:
            seconds, applied_to = await replay(url, db_url, folder / "baseline")
            assert applied_to == head, (applied_to, head)
            reference = model(home)
        results.append(CatchUp(BASELINE, 1, seconds, seconds))
        for n in counts:
            await _clear_leases(nc)
            results.append(await _workers_catch_up(n, nc, head, folder / f"w{n}", reference))
    return head, results


async def _clear_leases(nc: Client) -> None:
    """A fresh bucket each run (it keeps the TTL it was made with)."""
    with contextlib.suppress(Exception):
        await nc.jetstream().delete_key_value(BUCKET)


def fit(results: list[CatchUp], head: int) -> tuple[float, float] | None:
    """(r, a): µs of CPU an event that every worker pays (reading, decoding, routing),
    and that the workers share (translating, applying), fitted by least squares to the
    workers' total CPU: ``N * r + a`` an event for ``N`` workers."""
    points = [
        (r.processes, sum(r.cpu) / head * 1e6)
        for r in results
        if r.cpu and (r.processes == 1 or r.shared_after is not None)
    ]  # (a run that ended before every worker had a share says nothing of sharing)
    if len({n for n, _ in points}) < 2:
        return None
    mean_n = statistics.fmean(n for n, _ in points)
    mean_c = statistics.fmean(c for _, c in points)
    slope = sum((n - mean_n) * (c - mean_c) for n, c in points) / sum(
        (n - mean_n) ** 2 for n, _ in points
    )
    return slope, mean_c - slope * mean_n


def catchup_report(orders: int, head: int, results: list[CatchUp]) -> Table:
    base = head / results[0].seconds
    table = Table(title=f"catching up on {orders:,} orders ({head:,} events) into PostgreSQL")
    for column in (
        "projector", "seconds", "events/s", "ratio to baseline",
        "from the last start", "shared after s", "events/s once shared",
        "CPU s (each worker)", "model = baseline's",
    ):  # fmt: skip
        table.add_column(column, justify="left" if column == "projector" else "right")
    for r in results:
        rate = head / r.seconds
        table.add_row(
            r.name,
            f"{r.seconds:.2f}",
            f"{rate:,.0f}",
            f"{rate / base:.2f}",
            f"{head / r.seconds_from_last:,.0f}" if r.cpu else "",
            f"{r.shared_after:.2f}" if r.shared_after is not None else "",
            f"{r.shared_rate:,.0f}" if r.shared_rate is not None else "",
            " ".join(f"{c:.1f}" for c in r.cpu),
            "yes" if r.equal else "NO",
        )
    table.caption = _caption() + "; " + scaling_note(results, head)
    return table


def scaling_note(results: list[CatchUp], head: int) -> str:
    """The fitted CPU model in a line (the caption)."""
    fitted = fit(results, head)
    if fitted is None:
        return "too few runs where every worker had a share to fit the workers' CPU"
    r, a = fitted
    if r <= 0 or a <= 0:
        return (
            f"the workers' CPU does not fit N * r + a (r {r:.1f}, a {a:.1f} µs an event): "
            "some read the stream more than once"
        )
    best = {n: 1e6 / (r + a / n) for n in (1, 2, 4, 8)}
    return (
        f"CPU an event: {r:.1f} µs paid by every worker (read, decode, route), {a:.1f} µs "
        "shared (translate, apply); with a core each: "
        + ", ".join(f"{n} -> {rate:,.0f}/s" for n, rate in best.items())
        + f", at most {1e6 / r:,.0f}/s"
    )


def scaling_text(results: list[CatchUp], head: int) -> str:
    """How the workers scaled in this run, and what more cores would give (a note)."""
    workers = {r.processes: r for r in results if r.cpu}
    one = workers.get(1)
    if one is None:
        return "No single worker measured."
    parts = [
        f"One worker caught up at {head / one.seconds:,.0f} events/s, using "
        f"{sum(one.cpu):.1f} CPU seconds ({sum(one.cpu) / head * 1e6:.0f} µs an event)."
    ]
    for n, r in sorted(workers.items()):
        if n == 1:
            continue
        shared = (
            f"; every worker held its share after {r.shared_after:.1f} s, and from then on "
            f"they ran at {r.shared_rate:,.0f} events/s"
            if r.shared_after is not None and r.shared_rate is not None
            else "; the catch-up ended before every worker held its share"
        )
        parts.append(
            f"{n} workers: {head / r.seconds:,.0f} events/s ({r.seconds / one.seconds:.2f} "
            f"times one worker's time), {sum(r.cpu):.1f} CPU seconds in all "
            f"({sum(r.cpu) / sum(one.cpu):.1f} times one worker's){shared}."
        )
    late = [r for r in workers.values() if (r.shared_after or 0) > 2 * DEFAULT_TTL / 3]
    if late:
        parts.append(
            "Sharing took longer than the two lease rounds (4 s) it needs on an idle "
            "machine: a worker applying batches renews its leases late (one awaited "
            "request a slice on the loop the synchronous batches block), so leases and "
            "presence expire and the slices move again (see the module's docstring)."
        )
    parts.append(
        "On 2 cores the workers, nats-server and PostgreSQL share two cores: a second "
        "worker has no idle core to run on, so the total CPU, not the number of workers, "
        "bounds the rate, and every worker reads and decodes the whole stream (a cost "
        "paid N times). A joining worker gets its share only at the others' next lease "
        "rounds (every TTL / 3, 2 s by default, later when a busy worker's rounds are "
        "late), so a catch-up of a few seconds is mostly done before it is shared. "
        "With more cores (a core per worker, PostgreSQL and nats-server with their own): "
        "each worker's time an event is r + a / N (r: reading, decoding and routing, paid "
        "by each; a: translating and applying, shared), so the rate rises towards 1 / r "
        "and stops there; the caption's fit of this run's CPU gives r and a where it "
        "fits. Billing's ten accounts are updated by every batch of every worker, so "
        "their transactions also queue on the same rows: a model whose rows the slices "
        "do not share scales better."
    )
    return " ".join(parts)


# -- SIGKILL --------------------------------------------------------------------------


@dataclass
class Kill:
    slices: int
    held: float
    """Seconds from the SIGKILL until every slice it held is held by a live worker."""
    moved: float
    """... until each of them has a checkpoint past the stream's head at the kill."""
    balanced: float | None
    """Seconds from the replacement's start until the slices are shared by all three
    (None after the last kill: no replacement)."""


@dataclass
class Kills:
    ttl: float
    kills: list[Kill]
    head: int
    equal: bool
    rows: dict[str, int]


@dataclass
class Traffic:
    url: str
    nc: Client
    relay: Relay
    stop_orders: asyncio.Event


@contextlib.asynccontextmanager
async def _traffic(folder: Path, orders: int, rate: float) -> AsyncIterator[Traffic]:
    """Sales' stream of ``orders`` orders, then ``rate`` more a second (the relay in this
    process) until ``stop_orders`` is set."""
    sales = Sales(data_dir=folder / "sales")
    try:
        fill_log(sales, orders)
        customers = [sales.register_customer(f"T{i}", f"t{i}@example.com") for i in range(10)]
        with EmbeddedServer(folder / "nats") as server:
            nc = await connect(server.url)
            stop_relay, stop_orders = asyncio.Event(), asyncio.Event()
            relay = Relay(sales, nc)
            await relay.run(until_head=True)
            relaying = asyncio.create_task(relay.run(stop_relay))

            async def place() -> None:
                started, i = time.monotonic(), 0
                while not stop_orders.is_set():
                    sales.place_order(customers[i % len(customers)], LINES)
                    i += 1
                    await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))

            placing = asyncio.create_task(place())
            try:
                yield Traffic(server.url, nc, relay, stop_orders)
            finally:
                stop_orders.set()
                await placing
                stop_relay.set()
                await relaying
                await nc.close()
    finally:
        sales.close()


async def _held(nc: Client) -> dict[int, int | None]:
    """The pid holding each slice (None: nobody; nothing before the bucket is made)."""
    try:
        kv = await nc.jetstream().key_value(BUCKET)
    except (BucketNotFoundError, NotFoundError):
        return {}
    return {
        h.slice: (h.holder.pid if h.holder is not None else None)
        for h in await holders(kv, GROUP, SLICES)
    }


async def _head(nc: Client) -> int:
    return int((await nc.jetstream().stream_info("sales")).state.last_seq)


async def _balanced(nc: Client, workers: list[Toolkit], home: ReadModelHome) -> float:
    """When every slice is held, each live worker holding some, none by another."""
    live = {w.pid for w in workers}
    head = await _head(nc)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # (the bucket may not exist yet)
            held = await _held(nc)
            checkpoints = slice_checkpoints(home)
            if (
                set(held.values()) == live
                and len(checkpoints) == SLICES
                and min(checkpoints.values()) >= head
            ):
                return time.monotonic()
        await asyncio.sleep(POLL)
    raise TimeoutError(f"the slices were not shared by {len(live)} workers within 120 s")


async def measure_kills(
    orders: int, kills: int, ttl: float, folder: Path, rate: float = 100.0, workers_n: int = 3
) -> Kills:
    """SIGKILL one of ``workers_n`` workers ``kills`` times while ``rate`` orders a second
    flow, with leases of ``ttl`` seconds; then check the model against a clean build."""
    done: list[Kill] = []
    async with _traffic(folder, orders, rate) as traffic:
        nc, url = traffic.nc, traffic.url
        with fresh_database() as db_url, billing_home(folder, db_url) as home:

            def worker() -> Toolkit:
                return Toolkit(["project", "billing"], nats_url=url, db_url=db_url,
                               data_dir=folder / "workers", ttl=ttl)  # fmt: skip

            workers = [worker() for _ in range(workers_n)]
            try:
                for w in workers:
                    await w.start()
                for w in workers:
                    await w.until_ready()
                await _balanced(nc, workers, home)
                for i in range(kills):
                    victim = workers.pop(0)
                    done.append(await _kill(nc, home, victim, workers))
                    if i == kills - 1:
                        break  # (the survivors finish; no need of a new one)
                    fresh = worker()  # as a supervisor would start one
                    workers.append(fresh)
                    await fresh.start()
                    began = await fresh.until_ready()
                    done[-1].balanced = await _balanced(nc, workers, home) - began
                head = await _final_head(traffic)
                await until(
                    lambda: min(slice_checkpoints(home).values(), default=0) >= head,
                    120,
                    f"every slice at the head {head}",
                )
            finally:
                for w in workers:
                    await w.stop()
            faulted = model(home)
        with fresh_database() as clean_url, billing_home(folder, clean_url) as clean:
            await replay(url, clean_url, folder / "clean")
            reference = model(clean)
    rows = {t: len(r) for t, r in faulted.items()}
    return Kills(ttl, done, head, faulted == reference, rows)


async def _kill(nc: Client, home: ReadModelHome, victim: Toolkit, live: list[Toolkit]) -> Kill:
    """SIGKILL ``victim``; how soon the slices it held are held by ``live`` workers, and
    applied by them past the stream's head at the kill."""
    mine = [k for k, pid in (await _held(nc)).items() if pid == victim.pid]
    head = await _head(nc)
    assert victim.process is not None
    victim.process.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    await victim.wait()
    pids = {w.pid for w in live}
    taken: float | None = None
    deadline = killed + 120
    while time.monotonic() < deadline:
        if taken is None:  # (64 requests: not at every poll of the checkpoints)
            held = await _held(nc)
            if all(held.get(k) in pids for k in mine):
                taken = time.monotonic()
        checkpoints = slice_checkpoints(home)
        if all(checkpoints.get(k, 0) > head for k in mine):
            moved = time.monotonic()
            return Kill(len(mine), (taken or moved) - killed, moved - killed, None)
        await asyncio.sleep(POLL)
    raise TimeoutError(f"slices {mine} of the killed worker did not move within 120 s")


async def _final_head(traffic: Traffic) -> int:
    """The stream's head once orders stopped and the relay carried every event."""
    traffic.stop_orders.set()
    await until(lambda: not traffic.relay.lag() and traffic.relay.idle, 60, "the relay idle")
    return await _head(traffic.nc)


def kills_report(results: list[Kills]) -> Table:
    table = Table(title="SIGKILL of one of three workers: until its slices move again")
    for column in (
        "lease TTL s", "kills", "slices a kill", "held by others: median / max s",
        "moving again: median / max s", "new worker balanced: median / max s",
        "model = clean build",
    ):  # fmt: skip
        table.add_column(column, justify="right")
    for r in results:
        held = [k.held for k in r.kills]
        moved = [k.moved for k in r.kills]
        balanced = [k.balanced for k in r.kills if k.balanced is not None]
        rows = ", ".join(f"{t} {n:,}" for t, n in sorted(r.rows.items()))
        table.add_row(
            f"{r.ttl:g}" + (" (default)" if r.ttl == DEFAULT_TTL else ""),
            str(len(r.kills)),
            " ".join(str(k.slices) for k in r.kills),
            _median_max(held),
            _median_max(moved),
            _median_max(balanced),
            f"{'yes' if r.equal else 'NO'} ({rows})",
        )
    table.caption = (
        _caption() + "; a slice is moving again once its checkpoint passes the stream's "
        "head at the kill; orders placed during the kills, the relay in the benchmark"
    )
    return table


def _median_max(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} / {max(values):.2f}" if values else "-"


def _caption() -> str:
    return (
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, nats-py "
        f"{version('nats-py')}, psycopg {version('psycopg')}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.slices")
    parser.add_argument("--quick", action="store_true", help="5,000 orders, 3 kills")
    parser.add_argument("--orders", type=int, help="orders in the stream (100,000)")
    parser.add_argument("--kills", type=int, help="SIGKILLs at each TTL (5)")
    parser.add_argument(
        "--ttl", type=float, nargs="+", help="lease TTLs to kill at (6 2; --quick: 6)"
    )
    parser.add_argument("--rate", type=float, default=100.0, help="orders/s during kills")
    args = parser.parse_args(argv)
    orders = args.orders or (5000 if args.quick else 100_000)
    kills = args.kills or (3 if args.quick else 5)
    ttls = args.ttl or ([DEFAULT_TTL] if args.quick else [DEFAULT_TTL, 2.0])
    console = Console(width=140)
    with tempfile.TemporaryDirectory(prefix="bench-slices-") as folder:
        head, results = asyncio.run(measure_catchup(orders, Path(folder) / "catchup"))
        console.print(catchup_report(orders, head, results))
        killed = [
            asyncio.run(measure_kills(1000, kills, ttl, Path(folder) / f"kills-{ttl:g}", args.rate))
            for ttl in ttls
        ]
    console.print(kills_report(killed))


if __name__ == "__main__":
    main()
