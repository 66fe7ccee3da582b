"""Write path: commands/s through an aggregate into the context's log, the toolkit's
context beside eventsourcing's own ``Application.save`` running the same command on the
same backend, in one run.

    python -m benchmarks.write_path [--commands N]

The command is sales' ``place_order``: read the customer from the log, validate the lines,
create an ``Order`` and save it (one event, one transaction). Each contender runs it
``--commands`` times in one thread, orders spread over ten customers, the contenders
taking turns twice, each one's better round counting:

- eventsourcing: an ``Application`` carrying sales' very commands, with eventsourcing's
  defaults (its ``JSONTranscoder``) and no toolkit code on the way: the baseline;
- toolkit: the ``Sales`` context as users get it (``OrjsonTranscoder``, save listeners);
- toolkit with eventsourcing's ``JSONTranscoder``: the same context with the transcoder
  swapped back, so that the transcoder's share of the difference shows.

SQLite is a file in a temporary folder; PostgreSQL the server at 127.0.0.1:5432 (trust
auth, database ``test``), each contender in a fresh schema of its own, dropped
afterwards. Without a PostgreSQL server its rows say why they were not measured.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from rich.console import Console
from rich.table import Table

from contexts.sales import Sales

BACKENDS = ("SQLite", "PostgreSQL")
BASELINE = "eventsourcing Application.save, same command (baseline)"
TOOLKIT = "toolkit context (OrjsonTranscoder, save listeners)"
JSON_TOOLKIT = "toolkit context with eventsourcing's JSONTranscoder"
CONTENDERS = (BASELINE, TOOLKIT, JSON_TOOLKIT)
POSTGRES = {"HOST": "127.0.0.1", "PORT": "5432", "DBNAME": "test", "USER": "postgres"}
POSTGRES_DSN = " ".join(f"{key.lower()}={value}" for key, value in POSTGRES.items())
LINES = [
    {"sku": "tea", "quantity": 2, "unit_price": Decimal("1.25")},
    {"sku": "cups", "quantity": 1, "unit_price": Decimal("7.90")},
]


class PlainSales(Application[UUID]):
    """Sales' commands on eventsourcing's ``Application`` alone: its defaults, none of
    the toolkit's additions (transcoder, listeners, conflict translation)."""

    name = "plainsales"
    register_customer: Callable[..., UUID] = Sales.register_customer
    place_order: Callable[..., UUID] = Sales.place_order
    _customer = Sales._customer


Results = dict[str, dict[str, float] | str]
"""Per backend: commands/s of each contender, or why the backend was not measured."""


def _app(contender: str, env: dict[str, str], folder: Path) -> Any:
    if contender == BASELINE:
        return PlainSales(env=env)
    if contender == JSON_TOOLKIT:
        env = {**env, "TRANSCODER_TOPIC": "eventsourcing.persistence:JSONTranscoder"}
    return Sales(env=env, data_dir=folder)


def run_commands(app: Any, commands: int) -> float:
    """Commands/s of ``commands`` orders placed one after the other."""
    customers = [app.register_customer(f"C{i}", f"c{i}@example.com") for i in range(10)]
    for i in range(min(50, commands)):  # warm up: first queries, prepared statements
        app.place_order(customers[i % 10], LINES)
    started = time.perf_counter()
    for i in range(commands):
        app.place_order(customers[i % 10], LINES)
    return commands / (time.perf_counter() - started)


@contextlib.contextmanager
def sqlite_log(folder: Path) -> Iterator[dict[str, str]]:
    folder.mkdir(parents=True, exist_ok=True)
    yield {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(folder / "log.db")}


@contextlib.contextmanager
def postgres_log(folder: Path) -> Iterator[dict[str, str]]:
    """A fresh schema of its own in database ``test``, dropped afterwards."""
    import psycopg

    schema = f"bench_write_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_DSN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    try:
        settings = {f"POSTGRES_{key}": value for key, value in POSTGRES.items()}
        yield {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            **settings,
            "POSTGRES_PASSWORD": "",
            "POSTGRES_SCHEMA": schema,
        }
    finally:  # a connection of its own: other tests on this server may end connections
        with psycopg.connect(POSTGRES_DSN, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


LOGS = {"SQLite": sqlite_log, "PostgreSQL": postgres_log}


def _attempt(backend: str, contender: str, commands: int, place: Path) -> float:
    with LOGS[backend](place) as env:
        app = _app(contender, env, place)
        try:
            return run_commands(app, commands)
        finally:
            app.close()


def measure(commands: int, folder: Path, *, rounds: int = 2, attempts: int = 3) -> Results:
    """Each contender on each backend, taking turns for ``rounds`` rounds, each one's
    better round counting (drift on a shared machine hits all alike). A run whose
    database connection was ended by someone else (tests sharing the server do that) is
    run again, up to ``attempts`` times."""
    results: Results = {}
    for backend in BACKENDS:
        rates: dict[str, float] = {}
        try:
            for turn in range(rounds):
                for n, contender in enumerate(CONTENDERS):
                    for attempt in range(1, attempts + 1):
                        try:
                            place = folder / f"{backend.lower()}-{turn}-{n}-{attempt}"
                            rate = _attempt(backend, contender, commands, place)
                            rates[contender] = max(rate, rates.get(contender, 0.0))
                            break
                        except OSError:  # psycopg's OperationalError is one
                            if attempt == attempts or not _server_answers(backend):
                                raise
        except OSError as exc:
            results[backend] = f"not measured: {str(exc).strip().splitlines()[0]}"
            continue
        results[backend] = rates
    return results


def _server_answers(backend: str) -> bool:
    if backend != "PostgreSQL":
        return False
    import psycopg

    try:
        psycopg.connect(POSTGRES_DSN, connect_timeout=5).close()
    except OSError:
        return False
    return True


def report(commands: int, results: Results) -> Table:
    table = Table(title=f"placing {commands:,} orders, one command after the other")
    for column in ("log", "contender", "commands/s", "µs a command", "ratio to baseline"):
        table.add_column(column, justify="left" if column in ("log", "contender") else "right")
    for backend, rates in results.items():
        if isinstance(rates, str):
            table.add_row(backend, rates, "-", "-", "-")
            continue
        baseline = rates[BASELINE]
        for name, rate in rates.items():
            table.add_row(
                backend, name, f"{rate:,.0f}", f"{1e6 / rate:,.0f}", f"{rate / baseline:.2f}"
            )
    table.caption = (
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, eventsourcing "
        f"{version('eventsourcing')}, one thread"
    )
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.write_path")
    parser.add_argument("--commands", type=int, default=5000, help="orders placed (5000)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-write-") as folder:
        results = measure(args.commands, Path(folder))
    Console(width=120).print(report(args.commands, results))


if __name__ == "__main__":
    main()
