"""Webhooks: a context's integration events POSTed to subscribers' callback URLs.

A subscriber registers a callback URL for one event type of a context, with a secret
(``POST /webhooks/<context>/subscriptions``). Subscriptions live in a small SQLite file
in the data folder, ``<data dir>/webhooks/<context>.sqlite`` (readable by its owner only:
it holds the secrets). A subscription receives the events published after its position
(by default the stream's head when it was made).

The dispatcher (``toolkit webhooks <context>``) is a consumer with its own queue: a
durable JetStream consumer (a :class:`~toolkit.read.workqueue.WorkQueue`) fans each event out
into one delivery record per matching subscription, in one SQLite transaction, and only
then acknowledges it; the delivery records are the queue its senders work from. Each
delivery is POSTed as the event's CloudEvents envelope, byte for byte as on the stream
(``Content-Type: application/cloudevents+json``), signed the Standard Webhooks way:

- ``webhook-id``: the event's id (``<context>:<log position>``), the same on every retry
  and wherever the event sits on the stream, so a receiver can drop a delivery it has
  already processed;
- ``webhook-timestamp``: Unix seconds of this attempt;
- ``webhook-signature``: ``v1,`` and the base64 HMAC-SHA256, keyed by the subscriber's
  secret, of ``<webhook-id>.<webhook-timestamp>.<body>`` (:func:`verify` checks one).

A 2xx answer marks the delivery done, and a done delivery is never sent again, whatever
restarts: the records outlive the process and the fan-out ignores what it already has.
Records are keyed by the event's id, not by its stream sequence: when the stream lost
messages and the relay published them again at new sequences (or the stream was created
again and refilled), an event already recorded is known at its new sequence, and a
sequence that now holds another event takes nothing for done. Only the relay's own
messages are fanned out (:func:`toolkit.wire.relay_position`): another publisher's
message names no event of the log, and could carry a real event's id; it is skipped with
a warning. Only a crash between a receiver's 2xx and that record can send one twice, with the same
``webhook-id``. Anything else (another status, a redirect, a timeout, a refused
connection) is retried with exponential back-off (doubling from ``backoff`` up to
``max_backoff``, with a little jitter, or after ``Retry-After`` when the receiver says),
and after ``max_attempts`` the delivery is parked as a dead letter with the reason,
listed at ``GET /webhooks/<context>/dead-letters`` and retried on request. One failing
subscriber delays nobody else. Deliveries are not ordered: a receiver orders by
``logposition``. Secrets are never logged nor returned by the API.
"""

import asyncio
import base64
import binascii
import contextlib
import fcntl
import hashlib
import hmac
import logging
import os
import random
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Annotated, Any, NamedTuple
from urllib.parse import urlsplit

import httpx
import nats.errors
from fastapi import APIRouter, Body, HTTPException, Request, Response
from nats.aio.client import Client
from nats.js.errors import NotFoundError
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from toolkit import wire
from toolkit.config import Settings
from toolkit.errors import ConfigurationError
from toolkit.http.feed import PROBLEM_RESPONSES, NatsLink, unavailable
from toolkit.nats.connection import Connection, open_nats, redact_urls
from toolkit.read.reader import StreamMessage
from toolkit.read.workqueue import WorkQueue
from toolkit.wire.contracts import contract_of
from toolkit.write.context import BoundedContext

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
MEDIA_TYPE = "application/cloudevents+json"
QUEUE = "webhooks"
"""The name of the dispatcher's durable consumer on the context's stream."""

# -- signing (Standard Webhooks) ------------------------------------------------------------


def secret_key(secret: str) -> bytes:
    """The HMAC key of a secret ``whsec_<base64>`` (the prefix is optional): 24 to 64
    random bytes, as Standard Webhooks asks. The error never repeats the secret."""
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the secret must be 'whsec_' and base64 (Standard Webhooks)") from None
    if not 24 <= len(key) <= 64:
        raise ValueError(f"the secret must hold 24 to 64 bytes once decoded, not {len(key)}")
    return key


def new_secret() -> str:
    """A fresh secret in the Standard Webhooks format."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for a delivery."""
    signed = b"%s.%d.%s" % (msg_id.encode(), timestamp, body)
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: float = 300.0,
    now: float | None = None,
) -> bool:
    """What a receiver does: check a delivery's signature, and that its timestamp is
    within ``tolerance`` seconds of now (so a captured request cannot be replayed later).
    ``headers`` must look names up case-insensitively (as Starlette's and httpx's do)."""
    try:
        msg_id = headers["webhook-id"]
        timestamp = int(headers["webhook-timestamp"])
        signatures = headers["webhook-signature"].split()
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, msg_id, timestamp, body)
    return any(hmac.compare_digest(expected, s) for s in signatures)


def _where(url: str) -> str:
    """A callback URL fit for logs: no credentials, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path}"


# -- the store --------------------------------------------------------------------------------

SCHEMA_VERSION = 1
"""The store's layout, in SQLite's ``user_version``: 0 keyed deliveries by stream sequence
(converted on opening, see :meth:`WebhookStore._migrate`), 1 keys them by event id."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS subscription (
    id TEXT PRIMARY KEY,
    event_type TEXT NOT NULL,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    after INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (event_type, url)
);
CREATE TABLE IF NOT EXISTS event (
    id TEXT PRIMARY KEY,
    sequence INTEGER NOT NULL,
    type TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS delivery (
    subscription_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'parked')),
    attempts INTEGER NOT NULL DEFAULT 0,
    due REAL NOT NULL,
    reason TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (subscription_id, event_id)
);
CREATE INDEX IF NOT EXISTS delivery_due ON delivery (due) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS delivery_event ON delivery (event_id);
"""

_FROM_SEQUENCES = (
    "ALTER TABLE delivery RENAME TO delivery_0",
    "ALTER TABLE event RENAME TO event_0",
    "DROP INDEX delivery_due",
    "DROP INDEX delivery_position",
    *_SCHEMA.split(";"),
    # the latest sequence an event was read at; for one event twice (the fault fixed here),
    # what was done wins over what waits, and that over what was parked
    "INSERT OR IGNORE INTO event (id, sequence, type, body)"
    " SELECT id, position, type, body FROM event_0 ORDER BY position DESC",
    "INSERT OR IGNORE INTO delivery"
    " (subscription_id, event_id, state, attempts, due, reason, updated_at)"
    " SELECT d.subscription_id, e.id, d.state, d.attempts, d.due, d.reason, d.updated_at"
    " FROM delivery_0 d JOIN event_0 e ON e.position = d.position"
    " ORDER BY d.state = 'delivered' DESC, d.state = 'pending' DESC",
)


class Subscription(BaseModel):
    id: str
    context: str
    event_type: str
    url: str
    after: int = Field(description="events after this stream position are delivered")
    created_at: str


class DeadLetter(BaseModel):
    """A delivery that kept failing, parked until it is retried."""

    subscription_id: str
    url: str
    event_id: str
    event_type: str
    position: int = Field(description="the stream sequence the event was last read at")
    attempts: int
    reason: str
    parked_at: str


class Due(NamedTuple):
    """A delivery to attempt now."""

    subscription_id: str
    event_id: str
    attempts: int
    url: str
    secret: str
    body: bytes


class DuplicateSubscription(Exception):
    def __init__(self, existing: str) -> None:
        super().__init__(existing)
        self.existing = existing


def _now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class WebhookStore:
    """Subscriptions, the events awaiting delivery, and each delivery's record, in one
    SQLite file per context."""

    def __init__(self, path: Path, context: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.context = context
        fresh = not path.exists()
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")  # the API and the dispatcher share it
        self.db.execute("PRAGMA busy_timeout=5000")
        if fresh:
            os.chmod(path, 0o600)  # it holds the subscribers' secrets
        (version,) = self.db.execute("PRAGMA user_version").fetchone()
        if version != SCHEMA_VERSION:
            try:
                self._migrate()
            except BaseException:
                self.db.close()
                raise

    @classmethod
    def of(cls, data_dir: Path, context: str) -> "WebhookStore":
        return cls(Path(data_dir) / "webhooks" / f"{context}.sqlite", context)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "WebhookStore":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _migrate(self) -> None:
        """Create the tables, or convert a store whose deliveries are keyed by stream
        sequence (before schema 1). Pending and parked deliveries, and done ones whose
        event is still kept, are converted exactly (their event's body holds its id). A
        done delivery's body is dropped once sent, so for those the id is unknown here,
        and they are forgotten: such an event is sent again (with its ``webhook-id``) only
        if the dispatcher reads it again, which it does after its consumer is deleted or
        the stream re-sequenced, never on its own (its consumer goes on from where it
        acknowledged). Keeping them by sequence instead would take another event at that
        sequence, after a re-sequencing, for done: a loss rather than a repeat."""
        with self._transaction() as db:
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version == SCHEMA_VERSION:
                return  # another process converted it meanwhile
            if version > SCHEMA_VERSION:
                raise ConfigurationError(
                    f"{self.path} has webhook store schema {version}, written by a newer "
                    f"toolkit (this one knows {SCHEMA_VERSION}): run that version"
                )
            old = db.execute(
                "SELECT 1 FROM pragma_table_info('delivery') WHERE name = 'position'"
            ).fetchone()
            for statement in _FROM_SEQUENCES if old else _SCHEMA.split(";"):
                db.execute(statement)
            if old:
                (forgotten,) = db.execute(
                    "SELECT count(*) FROM delivery_0 d WHERE NOT EXISTS"
                    " (SELECT 1 FROM event_0 e WHERE e.position = d.position)"
                ).fetchone()
                (kept,) = db.execute("SELECT count(*) FROM delivery").fetchone()
                db.execute("DROP TABLE delivery_0")
                db.execute("DROP TABLE event_0")
                log.warning(
                    "webhooks %s: delivery records converted from stream sequences to event "
                    "ids: %d kept; %d done ones whose event id is no longer known forgotten "
                    "(sent again only if the dispatcher's consumer is deleted or the stream "
                    "re-sequenced)",
                    self.context, kept, forgotten,
                )  # fmt: skip
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # subscriptions

    def subscribe(self, event_type: str, url: str, secret: str, after: int) -> Subscription:
        row = Subscription(
            id=uuid.uuid4().hex,
            context=self.context,
            event_type=event_type,
            url=url,
            after=after,
            created_at=_now_text(),
        )
        try:
            self.db.execute(
                "INSERT INTO subscription (id, event_type, url, secret, after, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (row.id, event_type, url, secret, after, row.created_at),
            )
        except sqlite3.IntegrityError:
            (existing,) = self.db.execute(
                "SELECT id FROM subscription WHERE event_type = ? AND url = ?", (event_type, url)
            ).fetchone()
            raise DuplicateSubscription(existing) from None
        return row

    def subscriptions(self, subscription_id: str | None = None) -> list[Subscription]:
        rows = self.db.execute(
            "SELECT id, event_type, url, after, created_at FROM subscription"
            " WHERE ? IS NULL OR id = ? ORDER BY created_at, id",
            (subscription_id, subscription_id),
        ).fetchall()
        fields = ("id", "event_type", "url", "after", "created_at")
        return [
            Subscription(context=self.context, **dict(zip(fields, r, strict=True))) for r in rows
        ]

    def unsubscribe(self, subscription_id: str) -> bool:
        """Remove a subscription and its deliveries (pending, done or parked)."""
        with self._transaction() as db:
            gone = db.execute("DELETE FROM subscription WHERE id = ?", (subscription_id,))
            db.execute("DELETE FROM delivery WHERE subscription_id = ?", (subscription_id,))
            self._forget_delivered(db)
        return gone.rowcount > 0

    # the dispatcher's queue

    def fan_out(self, event_id: str, sequence: int, event_type: str, body: bytes) -> int:
        """Record one pending delivery of an event, read at stream ``sequence``, per
        subscription that wants it; a delivery of the event already recorded (pending,
        done or parked, read at this sequence or another) is left as it is. Returns how
        many deliveries are new."""
        now = time.time()
        with self._transaction() as db:
            created = db.execute(
                "INSERT OR IGNORE INTO delivery"
                " (subscription_id, event_id, state, attempts, due, updated_at)"
                " SELECT id, ?, 'pending', 0, ?, ? FROM subscription"
                " WHERE event_type = ? AND after < ?",
                (event_id, now, _now_text(), event_type, sequence),
            ).rowcount
            if created:
                db.execute(
                    "INSERT OR IGNORE INTO event (id, sequence, type, body) VALUES (?, ?, ?, ?)",
                    (event_id, sequence, event_type, body),
                )
        return int(created)

    def claim_due(self, limit: int, lease: float) -> list[Due]:
        """Up to ``limit`` deliveries that are due, oldest due first; each is leased for
        ``lease`` seconds (a dispatcher that dies mid-attempt retries it after that)."""
        now = time.time()
        with self._transaction() as db:
            rows = db.execute(
                "SELECT d.subscription_id, d.event_id, d.attempts, s.url, s.secret, e.body"
                " FROM delivery d JOIN subscription s ON s.id = d.subscription_id"
                " JOIN event e ON e.id = d.event_id"
                " WHERE d.state = 'pending' AND d.due <= ? ORDER BY d.due, e.sequence LIMIT ?",
                (now, limit),
            ).fetchall()
            db.executemany(
                "UPDATE delivery SET due = ? WHERE subscription_id = ? AND event_id = ?",
                [(now + lease, row[0], row[1]) for row in rows],
            )
        return [Due(*row) for row in rows]

    def next_due(self) -> float | None:
        (due,) = self.db.execute("SELECT min(due) FROM delivery WHERE state = 'pending'").fetchone()
        return None if due is None else float(due)

    def record(self, due: Due, *, delivered: bool, reason: str = "", retry_at: float = 0) -> str:
        """Record an attempt: done, due again at ``retry_at``, or (``retry_at`` 0) parked.
        Returns the delivery's new state."""
        state = "delivered" if delivered else ("pending" if retry_at else "parked")
        with self._transaction() as db:
            db.execute(
                "UPDATE delivery SET state = ?, attempts = attempts + 1, due = ?, reason = ?,"
                " updated_at = ? WHERE subscription_id = ? AND event_id = ? AND state = 'pending'",
                (state, retry_at, reason or None, _now_text(), due.subscription_id, due.event_id),
            )
            if delivered:
                self._forget_delivered(db, due.event_id)
        return state

    def _forget_delivered(self, db: sqlite3.Connection, event_id: str | None = None) -> None:
        """Drop the bodies of events no delivery waits for any more (done records stay)."""
        db.execute(
            "DELETE FROM event WHERE (? IS NULL OR id = ?) AND NOT EXISTS (SELECT 1"
            " FROM delivery d WHERE d.event_id = event.id AND d.state != 'delivered')",
            (event_id, event_id),
        )

    def dead_letters(self) -> list[DeadLetter]:
        rows = self.db.execute(
            "SELECT d.subscription_id, s.url, e.id, e.type, e.sequence, d.attempts, d.reason,"
            " d.updated_at FROM delivery d JOIN subscription s ON s.id = d.subscription_id"
            " JOIN event e ON e.id = d.event_id WHERE d.state = 'parked'"
            " ORDER BY e.sequence, d.subscription_id"
        ).fetchall()
        return [DeadLetter(**dict(zip(DeadLetter.model_fields, r, strict=True))) for r in rows]

    def retry(self, subscription_id: str, event_id: str) -> bool:
        """Put a parked delivery back in the queue, due now, with a fresh count."""
        changed = self.db.execute(
            "UPDATE delivery SET state = 'pending', attempts = 0, due = ?, reason = NULL,"
            " updated_at = ? WHERE subscription_id = ? AND event_id = ? AND state = 'parked'",
            (time.time(), _now_text(), subscription_id, event_id),
        )
        return changed.rowcount > 0

    def counts(self) -> dict[str, int]:
        """Deliveries by state."""
        rows = self.db.execute("SELECT state, count(*) FROM delivery GROUP BY state")
        return {"pending": 0, "delivered": 0, "parked": 0} | dict(rows.fetchall())


# -- the dispatcher -------------------------------------------------------------------------


@dataclass
class DispatchStats:
    read: int = 0
    """Events taken from the dispatcher's queue."""
    fanned_out: int = 0
    """Deliveries recorded from them."""
    untrusted: int = 0
    """Messages the context's relay did not publish (another client's, or malformed):
    nothing delivered."""
    delivered: int = 0
    retried: int = 0
    parked: int = 0


class Dispatcher:
    """Delivers a context's events to its webhook subscribers (one per data folder)."""

    def __init__(
        self,
        client: Client | Connection,
        context: str,
        data_dir: Path,
        *,
        max_attempts: int = 8,
        backoff: float = 1.0,
        max_backoff: float = 600.0,
        timeout: float = 10.0,
        concurrency: int = 16,
        poll: float = 1.0,
    ) -> None:
        if max_attempts < 1 or backoff <= 0 or concurrency < 1:
            raise ConfigurationError("max_attempts and concurrency must be 1 or more, backoff > 0")
        self.connection = Connection.of(client)
        """The queue's: a client the server closed is replaced."""
        self.context = context
        self.data_dir = Path(data_dir)
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.concurrency = concurrency
        self.poll = poll
        """How often due deliveries are looked for when nothing wakes the dispatcher
        (a dead letter retried through the API is noticed within this)."""
        self.stats = DispatchStats()
        self.queue = WorkQueue(  # (it sees others' messages: _fan_out counts and names them)
            self.connection, context, QUEUE, ack_wait=30.0, max_deliver=10, relayed_only=False
        )
        self._wake = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> DispatchStats:
        """Fan events out and deliver them until ``stop`` is set; attempts under way are
        finished (each within ``timeout``) before it returns."""
        lock_path = self.data_dir / "webhooks" / f"{self.context}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with lock_path.open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigurationError(
                    f"a webhook dispatcher for {self.context} already runs on {self.data_dir}"
                ) from None
            with WebhookStore.of(self.data_dir, self.context) as store:
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(self._follow(store, stop))
                    tasks.create_task(self._deliver(store, stop))
                    tasks.create_task(self._wake_on(stop))
        return self.stats

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    async def _follow(self, store: WebhookStore, stop: asyncio.Event) -> None:
        """Fan the stream out into deliveries, through the dispatcher's own queue; a
        missing stream is waited for, a lost server reconnected to."""
        while not stop.is_set():
            try:
                await self.queue.ensure()
                await self.queue.work(lambda m: self._fan_out(store, m), stop, batch=100)
            except NotFoundError:
                log.warning("stream %s does not exist yet; waiting for its context", self.context)
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning(
                    "webhooks %s: reading the queue failed (%s); again in a second",
                    self.context, type(exc).__name__,
                )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    async def _fan_out(self, store: WebhookStore, message: StreamMessage) -> None:
        self.stats.read += 1
        head = wire.relayed_head(self.context, message.headers.get(wire.MSG_ID), message.data)
        if isinstance(head, str):
            self.stats.untrusted += 1
            log.warning(
                "webhooks %s: sequence %d was not published by the %s relay, nothing to "
                "deliver: %s",
                self.context, message.sequence, self.context, head,
            )  # fmt: skip
            return
        assert head.id is not None  # relayed_head checked it
        created = store.fan_out(head.id, message.sequence, head.type, message.data)
        if created:
            self.stats.fanned_out += created
            self._wake.set()

    async def _deliver(self, store: WebhookStore, stop: asyncio.Event) -> None:
        lease = self.timeout + 30.0
        running: set[asyncio.Task[None]] = set()
        async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=False) as http:
            while not stop.is_set():
                self._wake.clear()
                free = self.concurrency - len(running)
                for due in store.claim_due(free, lease) if free > 0 else []:
                    task = asyncio.create_task(self._attempt(http, store, due))
                    running.add(task)
                    task.add_done_callback(running.discard)
                    task.add_done_callback(lambda _: self._wake.set())
                wait = self.poll  # when full, a finishing attempt wakes the loop
                next_due = store.next_due() if len(running) < self.concurrency else None
                if next_due is not None:
                    wait = min(wait, max(0.0, next_due - time.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
            if running:
                await asyncio.wait(running)

    async def _attempt(self, http: httpx.AsyncClient, store: WebhookStore, due: Due) -> None:
        try:
            await self._post(http, store, due)
        except Exception:  # the delivery stays leased: it is tried again after the lease
            log.exception(
                "webhooks %s: attempt of %s for subscription %s failed",
                self.context, due.event_id, due.subscription_id,
            )  # fmt: skip

    async def _post(self, http: httpx.AsyncClient, store: WebhookStore, due: Due) -> None:
        timestamp = int(time.time())
        headers = {
            "content-type": MEDIA_TYPE,
            "user-agent": "toolkit-webhooks",
            "webhook-id": due.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(due.secret, due.event_id, timestamp, due.body),
        }
        retry_after: float | None = None
        answer = b""
        try:
            async with http.stream("POST", due.url, content=due.body, headers=headers) as response:
                if not response.is_success:  # the start of its answer says why, at most
                    async for chunk in response.aiter_bytes():
                        answer += chunk
                        if len(answer) >= 200:
                            break
        except httpx.HTTPError as exc:
            reason = f"{type(exc).__name__}: {redact_urls(str(exc)) or 'no answer'}"
        else:
            if response.is_success:
                store.record(due, delivered=True)
                self.stats.delivered += 1
                log.info(
                    "webhooks %s: delivered %s to %s (subscription %s, attempt %d)",
                    self.context, due.event_id, _where(due.url), due.subscription_id,
                    due.attempts + 1,
                )  # fmt: skip
                return
            said = " ".join(answer[:200].decode(errors="replace").split())
            reason = f"HTTP {response.status_code}{f': {said}' if said else ''}"
            retry_after = _retry_after(response.headers.get("retry-after"))
        attempts = due.attempts + 1
        if attempts >= self.max_attempts:
            store.record(
                due, delivered=False, reason=f"gave up after {attempts} attempts: {reason}"
            )
            self.stats.parked += 1
            log.error(
                "webhooks %s: parked %s for %s (subscription %s) after %d attempts: %s",
                self.context, due.event_id, _where(due.url), due.subscription_id, attempts, reason,
            )  # fmt: skip
            return
        delay = min(self.max_backoff, self.backoff * 2 ** (attempts - 1))
        delay *= 1 + random.random() / 4  # jitter: receivers that recover are not stampeded
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff))
        store.record(due, delivered=False, reason=reason, retry_at=time.time() + delay)
        self.stats.retried += 1
        log.warning(
            "webhooks %s: %s to %s failed (attempt %d of %d, again in %.3gs): %s",
            self.context, due.event_id, _where(due.url), attempts, self.max_attempts, delay, reason,
        )  # fmt: skip


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (seconds or an HTTP date)."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


async def dispatch(
    settings: Settings,
    context: str,
    stop: asyncio.Event,
    say: Callable[[str], object] = print,
) -> DispatchStats:
    """What ``toolkit webhooks <context>`` runs: the dispatcher until ``stop`` is set."""
    async with open_nats(settings, name=f"webhooks-{context}") as link:
        dispatcher = Dispatcher(link.connection, context, settings.data_dir)
        say(f"delivering {context} events to webhook subscribers from {link.url}")
        stats = await dispatcher.run(stop)
    say(
        f"webhooks {context}: {stats.delivered} delivered, {stats.retried} retried, "
        f"{stats.parked} parked"
    )
    return stats


# -- the HTTP API ---------------------------------------------------------------------------


class NewSubscription(BaseModel):
    """A callback URL to POST one event type of the context to."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        max_length=2048, description="an http or https URL that answers 2xx to a delivery"
    )
    event_type: str = Field(description="a contract the context publishes: `sales.OrderPlaced`")
    secret: SecretStr = Field(
        description="`whsec_` and the base64 of 24 to 64 random bytes: the HMAC-SHA256 key "
        "of the `webhook-signature` header (Standard Webhooks). Never shown again."
    )
    after: int | None = Field(
        None, ge=0, description="deliver events after this stream position (default: now)"
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the callback URL must be http:// or https:// with a host")
        return url

    @field_validator("secret")
    @classmethod
    def _secret(cls, secret: SecretStr) -> SecretStr:
        secret_key(secret.get_secret_value())
        return secret


def router(
    contexts: Mapping[str, type[BoundedContext[Any]]], data_dir: Path, link: NatsLink
) -> APIRouter:
    """Subscriptions and dead letters of each context's webhooks."""
    event_types = {
        name: sorted(contract_of(c)[0] for c in cls.published_language.contracts)
        for name, cls in contexts.items()
    }
    api = APIRouter(prefix="/webhooks/{context}", tags=["webhooks"], lifespan=link.lifespan)

    def store(context: str) -> WebhookStore:
        if context not in event_types:
            known = ", ".join(sorted(event_types)) or "none"
            raise HTTPException(404, f"no context {context!r} (known: {known})")
        return WebhookStore.of(data_dir, context)

    async def head(context: str) -> int:
        client = await link.client()
        try:
            return int((await client.jetstream().stream_info(context)).state.last_seq)
        except NotFoundError:
            return 0
        except (nats.errors.Error, TimeoutError) as exc:
            raise unavailable(f"cannot read stream {context}: {type(exc).__name__}") from None

    @api.post(
        "/subscriptions", status_code=201, responses={409: {"description": "already subscribed"}}
    )
    async def subscribe(
        context: str,
        new: Annotated[NewSubscription, Body()],
        request: Request,
        response: Response,
    ) -> Subscription:
        """Register a callback URL for an event type of the context."""
        with store(context) as webhooks:
            known = event_types[context]
            if new.event_type not in known:
                raise HTTPException(
                    422,
                    f"unknown event type {new.event_type!r} for {context} "
                    f"(known: {', '.join(known)})",
                )
            after = new.after if new.after is not None else await head(context)
            secret = new.secret.get_secret_value()
            try:
                row = webhooks.subscribe(new.event_type, new.url, secret, after)
            except DuplicateSubscription as dup:
                raise HTTPException(
                    409,
                    f"{new.url} already receives {new.event_type} as subscription {dup.existing}",
                ) from None
        response.headers["Location"] = f"{request.url.path}/{row.id}"
        return row

    @api.get("/subscriptions")
    async def list_subscriptions(context: str) -> list[Subscription]:
        with store(context) as webhooks:
            return webhooks.subscriptions()

    @api.get("/subscriptions/{subscription_id}", responses={404: PROBLEM_RESPONSES[404]})
    async def get_subscription(context: str, subscription_id: str) -> Subscription:
        with store(context) as webhooks:
            rows = webhooks.subscriptions(subscription_id)
        if not rows:
            raise HTTPException(404, f"no subscription {subscription_id} for {context}")
        return rows[0]

    @api.delete("/subscriptions/{subscription_id}", status_code=204, response_model=None)
    async def unsubscribe(context: str, subscription_id: str) -> Response:
        """Stop deliveries to this subscription; pending and parked ones are dropped."""
        with store(context) as webhooks:
            if not webhooks.unsubscribe(subscription_id):
                raise HTTPException(404, f"no subscription {subscription_id} for {context}")
        return Response(status_code=204)

    @api.get("/dead-letters")
    async def dead_letters(context: str) -> list[DeadLetter]:
        """Deliveries that kept failing, with the reason of the last attempt."""
        with store(context) as webhooks:
            return webhooks.dead_letters()

    @api.post(
        "/dead-letters/{subscription_id}/{event_id}/retry", status_code=202, response_model=None
    )
    async def retry(context: str, subscription_id: str, event_id: str) -> Response:
        """Put a parked delivery back in the queue, with a fresh count of attempts."""
        with store(context) as webhooks:
            if not webhooks.retry(subscription_id, event_id):
                raise HTTPException(404, f"no dead letter of {subscription_id} for {event_id}")
        return Response(status_code=202)

    return api
