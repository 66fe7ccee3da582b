"""CLI start: how long ``toolkit --help`` and ``toolkit status --help`` take to answer,
beside the bare interpreter starting and exiting, in one run, taking turns.

    python -m benchmarks.startup [--runs N]

An operator's script and a container's health check pay this on every call; a command
that serves no HTTP should not pay for FastAPI, nor ``--help`` for nats-py. The last row,
importing the HTTP boundary, is what only ``toolkit serve`` and ``toolkit demo`` add.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "python -c pass"
HELP = "toolkit --help"
STATUS_HELP = "toolkit status --help"
HTTP = "python -c 'import toolkit.http'"
COMMANDS: dict[str, list[str]] = {
    BASELINE: ["-c", "pass"],
    HELP: ["-m", "toolkit", "--help"],
    STATUS_HELP: ["-m", "toolkit", "status", "--help"],
    HTTP: ["-c", "import toolkit.http"],
}


def _once(arguments: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, *arguments], cwd=ROOT, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - began


def measure(runs: int) -> dict[str, float]:
    """The median seconds of each command over ``runs`` rounds, all commands each round."""
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for arguments in COMMANDS.values():
        _once(arguments)  # warm the file cache and the bytecode
    for _ in range(runs):
        for name, arguments in COMMANDS.items():
            times[name].append(_once(arguments))
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def report(runs: int, medians: dict[str, float]) -> Table:
    table = Table(title=f"start to exit, median of {runs} rounds taking turns")
    table.add_column("command")
    table.add_column("ms", justify="right")
    table.add_column("times the bare interpreter", justify="right")
    for name, seconds in medians.items():
        table.add_row(name, f"{seconds * 1000:.0f}", f"{seconds / medians[BASELINE]:.1f}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__)
    parser.add_argument("--runs", type=int, default=20, help="rounds (20)")
    args = parser.parse_args()
    Console().print(report(args.runs, measure(args.runs)))


if __name__ == "__main__":
    main()
