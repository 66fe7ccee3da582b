"""HTTP reads: requests/s and latency of reading one shipment by id, the toolkit's API
beside a bare FastAPI endpoint running the same SQLite query on the same read model.

    python -m benchmarks.http [--orders N] [--requests N] [--concurrency 32]

Each server runs alone in its own uvicorn process (access log off for both); one aiohttp
client process sends ``--requests`` requests over ``--concurrency`` keep-alive
connections, ids taken round-robin from the model. The contenders take turns, twice, and
each one's better round counts, so drift on a shared machine hits both alike.

The toolkit's endpoint is the example system's as served by ``toolkit serve``: its
read-model dependency (ETag, checkpoint read, unknown-parameter check), metrics
middleware and problem details. The bare endpoint opens the same file read-only and runs
the same query into the same response model, nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any
from uuid import UUID

from rich.console import Console
from rich.table import Table

from benchmarks.relay import fill_log
from contexts.sales import Sales
from projections.shipping import Shipments
from projections.shipping.api import Shipment  # FastAPI resolves the annotation here
from toolkit import Relay
from toolkit.nats.connection import connect
from toolkit.nats.embedded import EmbeddedServer, free_ports
from toolkit.read.projector import Projector
from toolkit.read.store import ReadModelStore
from toolkit.readmodels.sqlite import SQLiteHome

BASELINE = "bare FastAPI endpoint, same query (baseline)"
TOOLKIT = "toolkit read endpoint (toolkit serve)"
_COLUMNS = "shipment_id, recipient_id, status, parcels, items, since, called_off_because"


def bare_app(model: Path) -> object:
    """What a user would write without the toolkit: one endpoint, one query."""
    from fastapi import FastAPI, HTTPException

    app = FastAPI()

    @app.get("/shipping/shipments/{shipment_id}")
    def get_shipment(shipment_id: UUID) -> Shipment:
        db = sqlite3.connect(f"file:{model}?mode=ro", uri=True, check_same_thread=False)
        try:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM shipment WHERE shipment_id = ?", (str(shipment_id),)
            ).fetchone()
        finally:
            db.close()
        if row is None:
            raise HTTPException(404, f"no shipment {shipment_id}")
        return Shipment.model_validate(dict(zip(_COLUMNS.split(", "), row, strict=True)))

    return app


def toolkit_app(data_dir: Path) -> object:
    from contexts.system import system
    from toolkit.config import Settings
    from toolkit.http.app import create_app

    return create_app(system, Settings(data_dir=data_dir), relay=False)


def build_read_model(data_dir: Path, orders: int) -> list[str]:
    """Sales' orders relayed and projected into shipping's read model; the shipment ids."""

    async def run() -> None:
        sales = Sales(data_dir=data_dir)
        try:
            fill_log(sales, orders)
            with EmbeddedServer(data_dir / "nats") as server:
                nc = await connect(server.url)
                try:
                    await Relay(sales, nc).run(until_head=True)
                    home = SQLiteHome(data_dir, "shipping")
                    store = ReadModelStore(home.live(), Shipments())
                    try:
                        await Projector(Shipments(), store, nc).run(until_head=True)
                    finally:
                        store.close()
                finally:
                    await nc.close()
        finally:
            sales.close()

    asyncio.run(run())
    current = SQLiteHome(data_dir, "shipping").current()
    assert current is not None
    with contextlib.closing(sqlite3.connect(current)) as db:
        return [row[0] for row in db.execute("SELECT shipment_id FROM shipment")]


def _free_port() -> int:
    return free_ports(1)[0]


@contextlib.contextmanager
def server(kind: str, data_dir: Path) -> Iterator[str]:
    """One contender in its own uvicorn process; yields its base URL."""
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.http",
            "--serve",
            kind,
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
        ],
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        wait_for_port(process, port, f"the {kind} server")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def wait_for_port(
    process: subprocess.Popen[bytes], port: int, what: str, within: float = 30
) -> None:
    """Until the server ``process`` listens on ``port``; RuntimeError when it exits first
    or takes longer than ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.05)


async def load(base: str, ids: list[str], requests: int, concurrency: int) -> list[float]:
    """Latencies (seconds) of ``requests`` GETs; a non-200 answer stops the run."""
    return await timed_requests(
        base,
        requests,
        concurrency,
        lambda session, i: session.get(f"/shipping/shipments/{ids[i % len(ids)]}"),
        200,
    )


async def timed_requests(
    base: str,
    requests: int,
    concurrency: int,
    send: Callable[[Any, int], Any],
    status: int,
) -> list[float]:
    """Latencies (seconds) of ``requests`` requests, ``send(session, i)`` each, over
    ``concurrency`` keep-alive connections of one aiohttp session; an answer other than
    ``status`` stops the run."""
    import aiohttp

    latencies: list[float] = []
    counter = iter(range(requests))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(base, connector=connector) as session:

        async def worker() -> None:
            for i in counter:
                started = time.perf_counter()
                async with send(session, i) as response:
                    await response.read()
                    if response.status != status:
                        raise RuntimeError(
                            f"{response.status} from {base}: {await response.text()}"
                        )
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def measure(
    orders: int, requests: int, folder: Path, *, concurrency: int = 32, rounds: int = 2
) -> dict[str, tuple[float, float, float]]:
    """(requests/s, p50 ms, p99 ms) of each contender: its better round."""
    data_dir = folder / "data"
    ids = build_read_model(data_dir, orders)
    model = SQLiteHome(data_dir, "shipping").current()
    assert model is not None
    best: dict[str, tuple[float, float, float]] = {}
    for _ in range(rounds):
        for name, kind, where in ((TOOLKIT, "toolkit", data_dir), (BASELINE, "bare", model)):
            with server(kind, where) as base:
                asyncio.run(load(base, ids, min(200, requests), concurrency))  # warm up
                started = time.perf_counter()
                latencies = sorted(asyncio.run(load(base, ids, requests, concurrency)))
                rate = len(latencies) / (time.perf_counter() - started)
            p50 = latencies[len(latencies) // 2] * 1000
            p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
            if name not in best or rate > best[name][0]:
                best[name] = (rate, p50, p99)
    return best


def report(
    requests: int, results: dict[str, tuple[float, float, float]], *, concurrency: int = 32
) -> Table:
    baseline = results[BASELINE][0]
    table = Table(
        title=f"reading one item by id, {requests:,} requests at concurrency {concurrency}"
    )
    for column in ("server", "requests/s", "ratio to baseline", "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "server" else "right")
    for name, (rate, p50, p99) in results.items():
        table.add_row(name, f"{rate:,.0f}", f"{rate / baseline:.2f}", f"{p50:.2f}", f"{p99:.2f}")
    table.caption = (
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, fastapi "
        f"{version('fastapi')}, uvicorn {version('uvicorn')} (httptools "
        f"{version('httptools')}); client: aiohttp in one process"
    )
    return table


def _serve(kind: str, port: int, data_dir: Path) -> None:
    import uvicorn

    from toolkit.http.protocols import RefusingProtocol

    app = toolkit_app(data_dir) if kind == "toolkit" else bare_app(data_dir)
    http = RefusingProtocol if kind == "toolkit" else "auto"  # (toolkit serve's; uvicorn's own)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, http=http)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.http")
    parser.add_argument("--orders", type=int, default=2000, help="orders in the read model")
    parser.add_argument("--requests", type=int, default=20_000, help="requests a round")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--serve", choices=("toolkit", "bare"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _serve(args.serve, args.port, args.data_dir)
        return
    with tempfile.TemporaryDirectory(prefix="bench-http-") as folder:
        results = measure(args.orders, args.requests, Path(folder), concurrency=args.concurrency)
    Console().print(report(args.requests, results, concurrency=args.concurrency))


if __name__ == "__main__":
    main()
