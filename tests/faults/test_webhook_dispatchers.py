"""Several webhook dispatchers of one context on one data folder (``toolkit webhooks
sales`` processes, the receiver of tests/integration/test_webhooks.py): without a fault
every delivery reaches its receiver once; a dispatcher SIGKILLed while it holds attempts
at the receiver, then started again, costs exactly those attempts a second sending, and
nothing else. Also the store's side: a stale claim records no failure, and a store
opened by several processes at once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

import pytest
from nats.aio.client import Client

from contexts.sales import Sales
from tests.conftest import serving, wait_for
from tests.flow import place_orders, relay_all
from tests.integration.test_webhooks import ALLOW, Receiver, events_of
from toolkit.nats.embedded import EmbeddedServer
from toolkit.webhooks import WebhookStore, new_secret

CONCURRENCY = 16
"""Attempts a dispatcher runs at once (``Dispatcher.concurrency``'s default)."""

ROUTES = {
    "/placed": "sales.OrderPlaced",
    "/also": "sales.OrderPlaced",
    "/cancelled": "sales.OrderCancelled",
}
"""The subscriptions: two of one type (an event goes to each), one of another."""


@pytest.fixture
def log_env() -> dict[str, str]:
    return {}  # the sales log in SQLite: the log is not the subject here


class Dispatchers:
    """``toolkit webhooks sales`` processes on one data folder, logs in files."""

    def __init__(self, nats_url: str, data_dir: Path) -> None:
        self.command = [
            sys.executable, "-m", "toolkit", "--nats-url", nats_url,
            "--data-dir", str(data_dir), "webhooks", "sales",
        ]  # fmt: skip
        self.env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
        self.env |= {"TOOLKIT_WEBHOOK_ALLOW": ",".join(ALLOW), "TOOLKIT_LEASE_TTL": "1"}
        self.logs = data_dir.parent / "logs"
        self.logs.mkdir(exist_ok=True)
        self.started: list[tuple[asyncio.subprocess.Process, IO[bytes]]] = []

    async def start(self) -> asyncio.subprocess.Process:
        log = (self.logs / f"{len(self.started)}.log").open("wb")
        process = await asyncio.create_subprocess_exec(
            *self.command, stdout=log, stderr=log, env=self.env
        )
        self.started.append((process, log))
        await wait_for(lambda: "delivering sales events" in self.text(process), within=30)
        return process

    def text(self, process: asyncio.subprocess.Process) -> str:
        (log,) = [log for p, log in self.started if p is process]
        return Path(log.name).read_text()

    async def stop(self) -> None:
        """SIGTERM the ones still running (each finishes its attempts and exits 0)."""
        for process, _ in self.started:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process, log in self.started:
            await asyncio.wait_for(process.wait(), 30)
            log.close()

    def delivered(self, process: asyncio.subprocess.Process) -> int:
        """What its summary line says it delivered (it exited 0)."""
        assert process.returncode == 0, self.text(process)
        (line,) = [x for x in self.text(process).splitlines() if " delivered, " in x]
        return int(line.split()[2])


@contextlib.asynccontextmanager
async def dispatchers(nats_url: str, data_dir: Path) -> AsyncIterator[Dispatchers]:
    running = Dispatchers(nats_url, data_dir)
    try:
        yield running
    finally:
        await running.stop()


async def subscribed(
    data_dir: Path, receiver: str, sales: Sales, nc: Client
) -> set[tuple[str, str]]:
    """Subscribe the routes, place and relay orders; every (route, event id) owed."""
    with WebhookStore.of(data_dir, "sales") as store:
        for path, event_type in ROUTES.items():
            store.subscribe(event_type, f"{receiver}{path}", new_secret(), after=0)
    place_orders(sales, 150, cancel_every=5)  # 150 placed (twice each), 30 cancelled
    await relay_all(sales, nc)
    by_type = {t: set(await events_of(nc, t)) for t in set(ROUTES.values())}
    return {(path, event) for path, t in ROUTES.items() for event in by_type[t]}


def claimed(data_dir: Path, paths: dict[str, str]) -> set[tuple[str, str]]:
    """The deliveries claimed right now (pending, due later), as (route, event id)."""
    with contextlib.closing(sqlite3.connect(data_dir / "webhooks" / "sales.sqlite")) as db:
        rows = db.execute(
            "SELECT subscription_id, event_id FROM delivery WHERE state = 'pending' AND due > ?",
            (time.time(),),
        ).fetchall()
    return {(paths[s], e) for s, e in rows}


def routes(data_dir: Path) -> dict[str, str]:
    """Subscription id -> the route it posts to."""
    with contextlib.closing(sqlite3.connect(data_dir / "webhooks" / "sales.sqlite")) as db:
        rows = db.execute("SELECT id, url FROM subscription").fetchall()
    return {id_: "/" + url.rsplit("/", 1)[1] for id_, url in rows}


def counts(data_dir: Path) -> dict[str, int]:
    with WebhookStore.of(data_dir, "sales") as store:
        return store.counts()


@pytest.mark.timeout(60)
async def test_two_dispatchers_deliver_every_event_once(
    nats_server: EmbeddedServer, nc: Client, sales: Sales, data_dir: Path
) -> None:
    hooks = Receiver(gate=asyncio.Event())
    started = time.monotonic()
    async with serving(hooks.app()) as receiver:
        owed = await subscribed(data_dir, receiver, sales, nc)
        assert len(owed) == 330
        async with dispatchers(nats_server.url, data_dir) as running:
            first, second = await running.start(), await running.start()
            # both at full concurrency: each holds attempts at the receiver at once
            await wait_for(lambda: hooks.held == 2 * CONCURRENCY, within=30)
            hooks.gate.set()  # type: ignore[union-attr]
            await wait_for(lambda: counts(data_dir)["delivered"] == len(owed), within=30)
    received = Counter((c.path, c.headers["webhook-id"]) for c in hooks.calls)
    assert set(received) == owed
    assert set(received.values()) == {1}  # exactly once each
    assert running.delivered(first) + running.delivered(second) == len(owed)
    assert counts(data_dir) == {"pending": 0, "delivered": 330, "parked": 0}
    print(f"2 dispatchers, {len(owed)} deliveries: {time.monotonic() - started:.1f}s")


@pytest.mark.timeout(60)
async def test_a_dispatcher_killed_mid_way_costs_only_its_attempts_in_flight(
    nats_server: EmbeddedServer, nc: Client, sales: Sales, data_dir: Path
) -> None:
    """Three dispatchers, each holding its 16 attempts at the receiver (the gate shut), and
    every event fanned out; one is SIGKILLed, the gate opens, it is started again. Its 16
    attempts reached the receiver but were never recorded: once their claims lapse
    (TOOLKIT_LEASE_TTL=1) another dispatcher sends them again, the only repeats."""
    hooks = Receiver(gate=asyncio.Event())
    started = time.monotonic()
    async with serving(hooks.app()) as receiver:
        owed = await subscribed(data_dir, receiver, sales, nc)
        paths = routes(data_dir)
        async with dispatchers(nats_server.url, data_dir) as running:
            victim, *_ = [await running.start() for _ in range(3)]
            await wait_for(lambda: hooks.held == 3 * CONCURRENCY, within=30)
            await wait_for(lambda: sum(counts(data_dir).values()) == len(owed), within=30)
            victim.send_signal(signal.SIGKILL)
            await asyncio.wait_for(victim.wait(), 10)
            in_flight = claimed(data_dir, paths)  # the victim's claims and the others'
            assert len(in_flight) == 3 * CONCURRENCY
            killed = time.monotonic()
            again = await running.start()
            hooks.gate.set()  # type: ignore[union-attr]
            await wait_for(lambda: counts(data_dir)["delivered"] == len(owed), within=30)
            took_over = time.monotonic()
    received = Counter((c.path, c.headers["webhook-id"]) for c in hooks.calls)
    twice = {delivery for delivery, n in received.items() if n > 1}
    assert set(received) == owed  # every event to every subscription, at least once
    assert set(received.values()) == {1, 2}
    assert len(twice) == CONCURRENCY  # the victim's attempts under way, and only those
    assert twice <= in_flight
    survivors = [p for p, _ in running.started if p is not victim]
    assert sum(running.delivered(p) for p in survivors) == len(owed)
    assert again in survivors and counts(data_dir)["pending"] == 0
    print(
        f"3 dispatchers, one SIGKILLed with {len(twice)} attempts under way and started "
        f"again, {len(owed)} deliveries: {took_over - started:.1f}s "
        f"({took_over - killed:.1f}s from the kill)"
    )


def test_a_stale_claim_records_no_failure_but_a_success(data_dir: Path) -> None:
    """A dispatcher held up past its claim (which another then took) must not count its
    failed attempt against the delivery, nor park it; its success still counts."""
    with WebhookStore.of(data_dir, "sales") as store:
        store.subscribe("sales.OrderPlaced", "https://example.com/hook", new_secret(), after=0)
        assert store.fan_out("sales:1", 1, "sales.OrderPlaced", b"{}") == 1
        (stale,) = store.claim_due(10, lease=0.0)  # lapses at once
        (taken,) = store.claim_due(10, lease=60)  # by another dispatcher
        assert taken.until > stale.until
        assert store.claim_due(10, lease=60) == []  # held: nobody else gets it
        assert store.renew([stale], lease=60) == []  # the stale one learns it lost it
        assert store.record(stale, delivered=False, reason="HTTP 500", retry_at=1.0) is None
        assert store.record(stale, delivered=False, reason="gave up") is None  # not parked
        (renewed,) = store.renew([taken], lease=60)
        assert store.record(taken, delivered=False, reason="HTTP 500", retry_at=1.0) is None
        assert store.record(renewed, delivered=False, reason="x", retry_at=1.0) == "pending"
        (again,) = store.claim_due(10, lease=60)
        assert again.attempts == 1  # the stale failures did not count
        assert store.record(again, delivered=False, reason="gave up") == "parked"
        # the stale attempt did reach the receiver after all: done, not a dead letter
        assert store.record(stale, delivered=True) == "delivered"
        assert store.counts() == {"pending": 0, "delivered": 1, "parked": 0}
        assert store.record(taken, delivered=True) is None  # done already


def test_a_new_store_opens_while_another_process_writes_it(data_dir: Path) -> None:
    """Putting a new file in WAL mode needs it alone, and SQLite may not wait for that
    (its busy handler is skipped where waiting could deadlock): dispatchers started
    together failed at once with 'database is locked' (1 round in 30 of 6 processes)."""
    path = data_dir / "webhooks" / "sales.sqlite"
    path.parent.mkdir()
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE first (x)")  # a file in the default (rollback) mode
    other.execute("BEGIN IMMEDIATE")  # as another process's first write holds it
    other.execute("INSERT INTO first VALUES (1)")
    release = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    release.start()
    try:
        with WebhookStore(path, "sales") as store:
            assert store.counts() == {"pending": 0, "delivered": 0, "parked": 0}
            (mode,) = store.db.execute("PRAGMA journal_mode").fetchone()
            assert mode == "wal"
    finally:
        release.join()
        other.close()
