"""HTTP commands: requests/s and latency of placing an order over HTTP, ``toolkit serve``
(its relay in the process, publishing each order's event to JetStream) beside a bare
FastAPI endpoint running the same command on an eventsourcing ``Application``, on SQLite
and on PostgreSQL, one request at a time and many at once.

    python -m benchmarks.http_commands [--requests N] [--concurrency 1 32] [--rounds 3]

The toolkit's contender is ``toolkit serve`` itself, in a process of its own, serving
the example system (sales' ``POST /sales/orders``: the body validated into its strict
model, the command run on a thread of the toolkit's pool, 201 with a consistency token; every
middleware of the API: metrics, body limit, tracing, conditional requests, problem
details) with its relays in the process and group commit (concurrent saves written together:
:mod:`toolkit.write.group_commit`), as the product runs by default; and once more with
each save in a transaction of its own (``TOOLKIT_GROUP_COMMIT=off``); and once with
``--no-relay``, its events left for a relay in another process (none runs here), to tell
what the relay in the process costs a request from what the rest of serve does. The bare
contender is what a user would write without the toolkit: a FastAPI app with the same
route, the same request model (so validation is alike), calling eventsourcing's own
``Application`` carrying sales' very commands (eventsourcing's defaults: its JSON
transcoder, no listeners) in FastAPI's thread pool, answering 201 with the order's id.
Both are served by uvicorn configured as ``toolkit serve`` configures it (one worker, its
default loop and HTTP implementation, log level info with the access log on, sent to
``/dev/null``).

The servers run side by side on a fresh log each (a SQLite file; on PostgreSQL at
127.0.0.1:5432 a fresh schema each, dropped afterwards) and a nats-server of their own
the benchmark starts (a stream holds one log's events; only the toolkit publishes); each
toolkit serve's readiness is asked at the end whether its relays ran throughout. One
aiohttp client process sends ``--requests`` orders at each concurrency over keep-alive
connections, spread over ten customers registered first; the contenders take turns, round
after round (who goes first alternating), and each one's best round at each concurrency
counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.http import timed_requests, wait_for_port
from benchmarks.write_path import LOGS
from contexts.sales.api import NewCustomer, NewOrder  # FastAPI resolves the annotations here
from toolkit.nats.embedded import EmbeddedServer, free_ports

BACKENDS = ("SQLite", "PostgreSQL")
BASELINE = "bare FastAPI endpoint, eventsourcing Application (baseline)"
TOOLKIT = "toolkit serve (relay in the process, group commit)"
UNGROUPED = "toolkit serve, group commit off"
UNRELAYED = "toolkit serve, its relay in another process (--no-relay)"
CONTENDERS = (TOOLKIT, UNGROUPED, UNRELAYED, BASELINE)
GROUP_COMMIT = {TOOLKIT: "on", UNGROUPED: "off", UNRELAYED: "on"}
"""Each toolkit contender's ``TOOLKIT_GROUP_COMMIT`` (``on`` is the default)."""
RELAYING = (TOOLKIT, UNGROUPED)
"""The toolkit contenders whose relays run in the process."""
ROOT = Path(__file__).resolve().parent.parent
ORDER_LINES = [
    {"sku": "tea", "quantity": 2, "unit_price": "1.25"},
    {"sku": "cups", "quantity": 1, "unit_price": "7.90"},
]


@dataclass(frozen=True)
class Round:
    """One contender's round at one concurrency."""

    rate: float
    """Requests a second."""
    p50: float
    p99: float
    """Milliseconds."""
    cpu: float | None = None
    """The server process's CPU time (user and system) a request, in microseconds
    (None where ``/proc`` does not say)."""


Results = dict[str, dict[int, dict[str, Round]] | str]
"""Per backend: per concurrency, each contender's best round; or why not measured."""


def bare_app() -> Any:
    """What a user would write without the toolkit: the route, the request model, the
    command on eventsourcing's ``Application``."""
    from fastapi import FastAPI

    from benchmarks.write_path import PlainSales

    sales = PlainSales()
    app = FastAPI()

    @app.post("/sales/customers", status_code=201)
    def register_customer(customer: NewCustomer) -> dict[str, uuid.UUID]:
        return {"id": sales.register_customer(customer.name, customer.email)}

    @app.post("/sales/orders", status_code=201)
    def place_order(order: NewOrder) -> dict[str, uuid.UUID]:
        lines = [line.model_dump() for line in order.lines]
        return {"id": sales.place_order(order.customer_id, lines)}

    return app


def _serve_bare(port: int) -> None:
    """uvicorn as ``toolkit serve`` runs it (its log config less the redacting filter)."""
    import uvicorn

    config = uvicorn.Config(bare_app(), host="127.0.0.1", port=port, log_level="info")
    uvicorn.Server(config).run()


@dataclass(frozen=True)
class Served:
    """A contender's server: where it answers, and its process."""

    url: str
    pid: int


@contextlib.contextmanager
def server(contender: str, backend: str, place: Path, nats_url: str) -> Iterator[Served]:
    """One contender in its own process on a fresh log."""
    place.mkdir(parents=True, exist_ok=True)
    port = free_ports(1)[0]
    ours = ("NATS_", "TOOLKIT_", "POSTGRES_", "SQLITE_", "PERSISTENCE_MODULE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    with LOGS[backend](place) as log:  # a SQLite file, or a fresh PostgreSQL schema
        if contender in GROUP_COMMIT:
            if backend == "SQLite":
                log = {}  # the toolkit's default: a SQLite file for each context in its data folder
            env |= log | {"TOOLKIT_DATA_DIR": str(place / "data"), "NATS_URL": nats_url}
            env["TOOLKIT_GROUP_COMMIT"] = GROUP_COMMIT[contender]
            argv = ["-m", "toolkit", "serve", "--port", str(port)]
            if contender not in RELAYING:
                argv.append("--no-relay")
        else:
            env |= log
            argv = ["-m", "benchmarks.http_commands", "--serve-bare", "--port", str(port)]
        process = subprocess.Popen(
            [sys.executable, *argv],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(process, port, contender, within=60)
            yield Served(f"http://127.0.0.1:{port}", process.pid)
        finally:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def register_customers(base: str, count: int = 10) -> list[str]:
    import aiohttp

    async with aiohttp.ClientSession(base) as session:
        ids = []
        for i in range(count):
            body = {"name": f"C{i}", "email": f"c{i}@example.com"}
            async with session.post("/sales/customers", json=body) as response:
                if response.status != 201:
                    raise RuntimeError(f"{response.status} from {base}: {await response.text()}")
                ids.append((await response.json())["id"])
        return ids


async def relaying(base: str) -> None:
    """Raise unless the server's relays run (its readiness names a relay that stopped)."""
    import aiohttp

    async with aiohttp.ClientSession(base) as session, session.get("/health/ready") as answer:
        reasons = (await answer.json()).get("reasons", [])
    stopped = [reason for reason in reasons if "relay" in reason]
    if stopped:
        raise RuntimeError(f"{base}: {'; '.join(stopped)}")


def cpu_seconds(pid: int) -> float | None:
    """The CPU time (user and system) process ``pid`` has used, from ``/proc`` (None
    where there is none)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # (after the command's name, which may hold spaces)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(
    base: str, customers: list[str], requests: int, concurrency: int, pid: int | None = None
) -> Round:
    """``requests`` orders placed over ``concurrency`` keep-alive connections; anything
    but 201 stops the run. ``pid``: the server's process, whose CPU a request is told."""
    bodies = [{"customer_id": customer, "lines": ORDER_LINES} for customer in customers]
    cpu_before = None if pid is None else cpu_seconds(pid)
    started = time.perf_counter()
    latencies = await timed_requests(
        base,
        requests,
        concurrency,
        lambda session, i: session.post("/sales/orders", json=bodies[i % len(bodies)]),
        201,
    )
    rate = len(latencies) / (time.perf_counter() - started)
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    cpu_after = None if pid is None else cpu_seconds(pid)
    cpu = (
        None
        if cpu_before is None or cpu_after is None
        else (cpu_after - cpu_before) / len(latencies) * 1e6
    )
    return Round(rate, p50, p99, cpu)


def _measure_backend(
    backend: str,
    requests: int,
    concurrencies: list[int],
    rounds: int,
    folder: Path,
) -> dict[int, dict[str, Round]]:
    best: dict[int, dict[str, Round]] = {c: {} for c in concurrencies}
    with contextlib.ExitStack() as servers:
        bases = {}
        for n, name in enumerate(CONTENDERS):  # a nats-server each: a stream holds one log's
            nats = servers.enter_context(EmbeddedServer(folder / f"nats-{n}"))  # events
            bases[name] = servers.enter_context(server(name, backend, folder / f"{n}", nats.url))
        customers = {name: asyncio.run(register_customers(s.url)) for name, s in bases.items()}
        for name, served in bases.items():  # warm up: first queries, the relay's first pages
            for concurrency in concurrencies:
                asyncio.run(load(served.url, customers[name], min(100, requests), concurrency))
        for turn in range(rounds):
            order = CONTENDERS if turn % 2 == 0 else CONTENDERS[::-1]
            for concurrency in concurrencies:
                for name in order:
                    measured = asyncio.run(
                        load(
                            bases[name].url,
                            customers[name],
                            requests,
                            concurrency,
                            bases[name].pid,
                        )
                    )
                    kept = best[concurrency].get(name)
                    if kept is None or measured.rate > kept.rate:
                        best[concurrency][name] = measured
        for name in RELAYING:  # each toolkit serve with its relay relayed throughout
            asyncio.run(relaying(bases[name].url))
    return {c: {name: best[c][name] for name in CONTENDERS} for c in concurrencies}


def measure(
    requests: int,
    folder: Path,
    *,
    concurrencies: tuple[int, ...] | list[int] = (1, 32),
    rounds: int = 3,
    backends: tuple[str, ...] = BACKENDS,
) -> Results:
    """Each contender's best round (requests/s, p50, p99) at each concurrency, per backend."""
    results: Results = {}
    for backend in backends:
        try:
            results[backend] = _measure_backend(
                backend, requests, list(concurrencies), rounds, folder / backend
            )
        except OSError as exc:  # no PostgreSQL server (psycopg's OperationalError)
            results[backend] = f"not measured: {str(exc).strip().splitlines()[0]}"
    return results


def report(requests: int, results: Results) -> Table:
    table = Table(title=f"placing an order over HTTP, {requests:,} requests a round")
    columns = (
        "log",
        "concurrency",
        "server",
        "requests/s",
        "ratio",
        "p50 ms",
        "p99 ms",
        "server CPU µs a request",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("log", "server") else "right")
    for backend, measured in results.items():
        if isinstance(measured, str):
            table.add_row(backend, "-", measured, "-", "-", "-", "-", "-")
            continue
        for concurrency, rounds in measured.items():
            baseline = rounds[BASELINE].rate
            for name, r in rounds.items():
                table.add_row(
                    backend,
                    str(concurrency),
                    name,
                    f"{r.rate:,.0f}",
                    f"{r.rate / baseline:.2f}",
                    f"{r.p50:.2f}",
                    f"{r.p99:.2f}",
                    "-" if r.cpu is None else f"{r.cpu:,.0f}",
                )
    table.caption = (
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, fastapi "
        f"{version('fastapi')}, uvicorn {version('uvicorn')} (httptools "
        f"{version('httptools')}), eventsourcing {version('eventsourcing')}; both servers "
        "uvicorn as toolkit serve runs it, the "
        "same route and request model; the baseline's command on eventsourcing's "
        "Application with its defaults, without relay, consistency token or the API's "
        "middleware; client: aiohttp in one process; ratio: requests/s to the baseline's; "
        "server CPU: the server process's user and system time over the round, a request"
    )
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.http_commands")
    parser.add_argument("--requests", type=int, default=3000, help="orders a round (3000)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=3, help="rounds each (3)")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_bare:
        _serve_bare(args.port)
        return
    with tempfile.TemporaryDirectory(prefix="bench-http-commands-") as folder:
        results = measure(
            args.requests,
            Path(folder),
            concurrencies=args.concurrency,
            rounds=args.rounds,
            backends=tuple(args.backends),
        )
    Console(width=140).print(report(args.requests, results))


if __name__ == "__main__":
    main()
