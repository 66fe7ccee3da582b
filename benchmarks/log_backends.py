"""The event log on JetStream, SQLite or PostgreSQL: save and aggregate-read rates of
eventsourcing's persistence modules in one run.

    python -m benchmarks.log_backends [--saves 2000] [--reads 2000]

Each backend gets the same eventsourcing application and the same work, one thread:

- saves of one new aggregate (one event each: the usual command);
- saves of five events at once (an aggregate created and changed four times before its
  save: one transaction on SQL, one atomic batch on JetStream);
- reads of an aggregate of ten events (``repository.get``, no cache);
- reads of the whole log in pages of 1000 notifications (what a relay does).

JetStream is the embedded nats-server (file storage) with ``toolkit.logs.jetstream``;
SQLite a file in a temporary folder; PostgreSQL the server at 127.0.0.1:5432 (trust auth,
database ``test``) in a fresh schema of its own, dropped afterwards. A backend that is not
there (no PostgreSQL) is reported as such rather than failing the run.
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
from pathlib import Path
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from rich.console import Console
from rich.table import Table

from toolkit.nats.embedded import EmbeddedServer

BACKENDS = ("JetStream", "SQLite", "PostgreSQL")
MEASURES = (
    "saves/s, one new aggregate (1 event)",
    "saves/s, 5 events at once",
    "aggregate reads/s (10 events each)",
    "log read, events/s (pages of 1000)",
)
POSTGRES_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"
TRANSCODER = "toolkit.write.transcoder:OrjsonTranscoder"


class Account(Aggregate):
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.balance = 0

    @event("Credited")
    def credit(self, amount: int) -> None:
        self.balance += amount


class Bank(Application[UUID]):
    name = "bank"


Results = dict[str, dict[str, float] | str]
"""Per backend: the rate of each measure, or why the backend could not be measured."""


def _rate(count: int, work: Callable[[], None]) -> float:
    started = time.perf_counter()
    work()
    return count / (time.perf_counter() - started)


def run_workload(env: dict[str, str], saves: int, reads: int) -> dict[str, float]:
    app = Bank(env={"TRANSCODER_TOPIC": TRANSCODER, **env})
    try:
        rates: dict[str, float] = {}

        def single() -> None:
            for n in range(saves):
                app.save(Account(f"owner {n}"))

        rates[MEASURES[0]] = _rate(saves, single)

        batches = max(1, saves // 5)

        def several() -> None:
            for n in range(batches):
                account = Account(f"owner {n}")
                for amount in range(4):
                    account.credit(amount)
                app.save(account)

        rates[MEASURES[1]] = _rate(batches, several)

        ids = []
        for n in range(max(1, reads // 10)):
            account = Account(f"reader {n}")
            for amount in range(9):
                account.credit(amount)
            app.save(account)
            ids.append(account.id)

        def read() -> None:
            for n in range(reads):
                account: Account = app.repository.get(ids[n % len(ids)])
                assert account.version == 10 and account.balance == 36

        rates[MEASURES[2]] = _rate(reads, read)

        head = app.recorder.max_notification_id() or 0

        def read_log() -> None:
            position, seen = 0, 0
            while position < head:
                page = app.recorder.select_notifications(position, 1000, inclusive_of_start=False)
                seen += len(page)
                position = page[-1].id
            assert seen == head

        rates[MEASURES[3]] = _rate(head, read_log)
        return rates
    finally:
        app.close()


@contextlib.contextmanager
def jetstream(folder: Path) -> Iterator[dict[str, str]]:
    with EmbeddedServer(folder / "nats") as server:
        yield {"PERSISTENCE_MODULE": "toolkit.logs.jetstream", "NATS_URL": server.url}


@contextlib.contextmanager
def sqlite(folder: Path) -> Iterator[dict[str, str]]:
    yield {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(folder / "bank.db")}


class Unavailable(Exception):
    """A backend that is not there to measure."""


@contextlib.contextmanager
def postgres(folder: Path) -> Iterator[dict[str, str]]:
    try:
        import psycopg

        admin = psycopg.connect(POSTGRES_DSN, autocommit=True, connect_timeout=5)
    except Exception as exc:  # no psycopg, or its OperationalError: no server there
        raise Unavailable(f"no PostgreSQL at 127.0.0.1:5432 ({type(exc).__name__})") from exc
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            yield {
                "PERSISTENCE_MODULE": "eventsourcing.postgres",
                "POSTGRES_HOST": "127.0.0.1",
                "POSTGRES_PORT": "5432",
                "POSTGRES_DBNAME": "test",
                "POSTGRES_USER": "postgres",
                "POSTGRES_PASSWORD": "",
                "POSTGRES_SCHEMA": schema,
            }
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


PLACES = {"JetStream": jetstream, "SQLite": sqlite, "PostgreSQL": postgres}


def measure(saves: int, reads: int, folder: Path) -> Results:
    results: Results = {}
    for backend in BACKENDS:
        place = folder / backend.lower()
        place.mkdir(parents=True, exist_ok=True)
        try:
            with PLACES[backend](place) as env:
                results[backend] = run_workload(env, saves, reads)
        except Unavailable as exc:
            results[backend] = f"not measured: {exc}"
    return results


def report(saves: int, reads: int, results: Results) -> Table:
    table = Table(title=f"the event log: {saves:,} saves and {reads:,} reads on each backend")
    table.add_column("")
    for backend in BACKENDS:
        table.add_column(backend, justify="right")
    for measure_name in MEASURES:
        row = [measure_name]
        for backend in BACKENDS:
            rates = results[backend]
            row.append(f"{rates[measure_name]:,.0f}" if isinstance(rates, dict) else "-")
        table.add_row(*row)
    notes = [f"{b}: {r}" for b, r in results.items() if isinstance(r, str)]
    table.caption = "; ".join(
        [f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, one thread", *notes]
    )
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.log_backends")
    parser.add_argument("--saves", type=int, default=2000, help="saves of each kind (2000)")
    parser.add_argument("--reads", type=int, default=2000, help="aggregate reads (2000)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-logs-") as folder:
        results = measure(args.saves, args.reads, Path(folder))
    Console(width=120).print(report(args.saves, args.reads, results))


if __name__ == "__main__":
    main()
