"""Replay: rebuilding billing's read model from sequence 1, its rate and its peak memory
as the stream grows, in one run.

    python -m benchmarks.replay [--sizes 100000 1000000]

Each replay runs in a process of its own (as ``toolkit replay`` does), so its peak
resident memory is its own; memory should not grow with the stream: the projector holds
at most one transaction of events (5,000) at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table

from benchmarks.relay import fill_log
from contexts.sales import Sales
from projections.billing import Accounts
from toolkit import Relay
from toolkit.nats.connection import connect
from toolkit.nats.embedded import EmbeddedServer
from toolkit.read.replay import rebuild
from toolkit.readmodels.sqlite import SQLiteHome


async def _replay(data_dir: Path, url: str) -> dict[str, float]:
    nc = await connect(url)
    try:
        started = time.perf_counter()
        result = await rebuild(Accounts(), SQLiteHome(data_dir, "billing"), nc)
        seconds = time.perf_counter() - started
    finally:
        await nc.close()
    return {"events": result.stats.checkpoints["sales"], "seconds": seconds}


def child(data_dir: str, url: str) -> None:
    """The replay process: prints what it did as JSON, with its peak RSS in bytes."""
    report = asyncio.run(_replay(Path(data_dir), url))
    print(orjson.dumps({**report, "peak": peak_rss()}).decode())


def peak_rss() -> int:
    """This process's peak resident memory (bytes) since it started its program:
    ``VmHWM``. Not ``ru_maxrss``, which Linux carries across ``execve``, so that a child
    started by a large parent reports the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def replay_in_a_process(data_dir: Path, url: str) -> tuple[dict[str, float], int]:
    """Run :func:`child` in a new process; return its report and its peak RSS (bytes)."""
    code = f"from benchmarks.replay import child; child({str(data_dir)!r}, {url!r})"
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert process.stdout is not None
    output = process.stdout.read()
    if process.wait() != 0:
        raise RuntimeError(f"replay process exited with {process.returncode}")
    report = orjson.loads(output)
    return report, int(report.pop("peak"))


def measure(sizes: list[int], folder: Path) -> dict[int, tuple[float, int]]:
    results: dict[int, tuple[float, int]] = {}
    for size in sizes:
        data = folder / f"n{size}"
        sales = Sales(data_dir=data)
        try:
            fill_log(sales, size)
            with EmbeddedServer(data / "nats") as server:
                asyncio.run(_relay(sales, server.url))
                report, peak = replay_in_a_process(data, server.url)
        finally:
            sales.close()
        results[size] = (report["events"] / report["seconds"], peak)
    return results


async def _relay(sales: Sales, url: str) -> None:
    nc = await connect(url)
    try:
        await Relay(sales, nc).run(until_head=True)
    finally:
        await nc.close()


def report(results: dict[int, tuple[float, int]]) -> Table:
    first_rate, first = next(iter(results.values()))
    table = Table(title="replaying billing from sequence 1 (a process per replay)")
    columns = ("orders in the stream", "events/s", "rate / smallest run's", "peak RSS (MiB)")
    for column in (*columns, "peak / smallest run's"):
        table.add_column(column, justify="right")
    for size, (rate, peak) in results.items():
        table.add_row(
            f"{size:,}",
            f"{rate:,.0f}",
            f"{rate / first_rate:.2f}",
            f"{peak / 2**20:,.1f}",
            f"{peak / first:.2f}",
        )
    table.caption = f"{os.cpu_count()} cores, Python {sys.version.split()[0]}"
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replay")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as folder:
        results = measure(args.sizes, Path(folder))
    Console(width=120).print(report(results))


if __name__ == "__main__":
    main()
