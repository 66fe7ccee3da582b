"""The webhooks' store: subscriptions, the events awaiting delivery, and each delivery's
record, in one SQLite file per context (``<data dir>/webhooks/<context>.sqlite``, readable
by its owner only). The subscribers' secrets are sealed there with the keys of
``TOOLKIT_WEBHOOK_KEYS`` (:mod:`toolkit.webhooks.keys`), never stored in plain text; URLs
are shown (listings, dead letters) without credentials.

The records are the dispatcher's queue and its memory: a done delivery is never sent
again, whatever restarts. They are keyed by the event's id, not by its stream sequence, so
an event the relay published again at a new sequence is known there, and a sequence that
now holds another event takes nothing for done.

The API and any number of dispatchers (other processes, on the same host: SQLite locks
do not span hosts) share the file (WAL, a busy timeout). Every write is one ``BEGIN
IMMEDIATE`` transaction, so writers take turns: two dispatchers never claim one delivery
(:meth:`WebhookStore.claim_due`), and an attempt is recorded only by the dispatcher whose
claim it is, unless it succeeded (:meth:`WebhookStore.record`). One store object is one
connection: use it from one thread at a time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from toolkit.errors import ConfigurationError
from toolkit.redaction import redact_urls
from toolkit.webhooks.keys import WebhookKeys

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
"""The store's layout, in SQLite's ``user_version``: 0 keyed deliveries by stream sequence
(converted on opening, see :meth:`WebhookStore._migrate`), 1 keys them by event id, 2
seals the secrets (1 held them in plain text: sealed on opening)."""

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


_DOCUMENTED: dict[str, Any] = {"use_attribute_docstrings": True}
"""How the API documents the records below: the attribute docstrings become the fields'
descriptions (pydantic reads ``__pydantic_config__``; a plain dict, so that this module
does not import pydantic)."""


@dataclass(frozen=True)
class Subscription:
    """A callback URL that receives one event type of a context."""

    __pydantic_config__: ClassVar[dict[str, Any]] = _DOCUMENTED

    id: str
    context: str
    event_type: str
    url: str
    """shown without credentials (``user:password@``)"""
    after: int
    """events after this stream position are delivered"""
    created_at: str


@dataclass(frozen=True)
class DeadLetter:
    """A delivery that kept failing, parked until it is retried."""

    __pydantic_config__: ClassVar[dict[str, Any]] = _DOCUMENTED

    subscription_id: str
    url: str
    """shown without credentials (``user:password@``)"""
    event_id: str
    event_type: str
    position: int
    """the stream sequence the event was last read at"""
    attempts: int
    reason: str
    parked_at: str


class Due(NamedTuple):
    """A delivery to attempt now, claimed by one dispatcher."""

    subscription_id: str
    event_id: str
    attempts: int
    url: str
    secret: str
    body: bytes
    until: float = 0.0
    """When the claim lapses (the record's ``due`` while it is claimed): it is also the
    claim's token. Each claim or renewal of a delivery writes a later time than any
    before it (a claim is taken only once the last has lapsed), so a dispatcher whose
    claim lapsed and was taken by another finds a ``due`` that is no longer its own."""

    @property
    def key(self) -> tuple[str, str]:
        return self.subscription_id, self.event_id


BUSY_TIMEOUT = 5.0
"""Seconds a write waits for another process's transaction before it fails."""


def _write_ahead(db: sqlite3.Connection) -> None:
    """Put the store in WAL mode. Switching a fresh file needs it alone, and SQLite does
    not wait for that (no busy handler): several processes opening a new store at once
    (dispatchers started together, the API) got ``database is locked``; retried here
    within the busy timeout. Once in WAL mode (kept in the file) this asks nothing."""
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class DuplicateSubscription(Exception):
    """The event type already goes to that URL, as subscription ``existing``."""

    def __init__(self, existing: str) -> None:
        super().__init__(existing)
        self.existing = existing


def _now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class WebhookStore:
    """Subscriptions, the events awaiting delivery, and each delivery's record, in one
    SQLite file per context."""

    def __init__(
        self, path: Path, context: str, keys: WebhookKeys | Sequence[str] | None = None
    ) -> None:
        self.keys = WebhookKeys.of(keys)  # (None: TOOLKIT_WEBHOOK_KEYS) none: refused
        path.parent.mkdir(parents=True, exist_ok=True)
        self.context = context
        fresh = not path.exists()
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
        try:
            _write_ahead(self.db)  # the API and the dispatchers share it
        except BaseException:
            self.db.close()
            raise
        self.db.execute("PRAGMA secure_delete=ON")  # a secret replaced or deleted is zeroed
        if fresh:
            os.chmod(path, 0o600)  # it holds the subscribers' secrets
        (version,) = self.db.execute("PRAGMA user_version").fetchone()
        try:
            if version != SCHEMA_VERSION:
                self._migrate()
            self._reseal()
        except BaseException:
            self.db.close()
            raise

    @classmethod
    def of(
        cls, data_dir: Path, context: str, keys: WebhookKeys | Sequence[str] | None = None
    ) -> WebhookStore:
        return cls(Path(data_dir) / "webhooks" / f"{context}.sqlite", context, keys)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> WebhookStore:
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
            plain = db.execute("SELECT id, secret FROM subscription").fetchall()
            db.executemany(  # before schema 2 secrets were plain text
                "UPDATE subscription SET secret = ? WHERE id = ?",
                [(self.keys.seal(secret), id_) for id_, secret in plain],
            )
            if plain:
                log.warning(
                    "webhooks %s: %d subscription secrets stored in plain text are now sealed "
                    "with TOOLKIT_WEBHOOK_KEYS (backups of the store made before still hold "
                    "them)",
                    self.context, len(plain),
                )  # fmt: skip
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

    def _reseal(self) -> None:
        """Seal again under the first key the secrets an older key sealed: what rotation
        asks of each store (a secret no key opens is refused, naming its subscription)."""
        rows = self.db.execute("SELECT id, secret FROM subscription").fetchall()
        stale = [(i, s) for i, s in rows if not self.keys.sealed_by_first(s)]
        if not stale:
            return
        with self._transaction() as db:
            db.executemany(  # unless another process resealed it meanwhile
                "UPDATE subscription SET secret = ? WHERE id = ? AND secret = ?",
                [(self.keys.reseal(s, f"subscription {i}"), i, s) for i, s in stale],
            )
        log.warning(
            "webhooks %s: %d subscription secrets sealed again under the first key of "
            "TOOLKIT_WEBHOOK_KEYS", self.context, len(stale),
        )  # fmt: skip

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
                (row.id, event_type, url, self.keys.seal(secret), after, row.created_at),
            )
        except sqlite3.IntegrityError:
            (existing,) = self.db.execute(
                "SELECT id FROM subscription WHERE event_type = ? AND url = ?", (event_type, url)
            ).fetchone()
            raise DuplicateSubscription(existing) from None
        return replace(row, url=redact_urls(url))

    def subscriptions(self, subscription_id: str | None = None) -> list[Subscription]:
        rows = self.db.execute(
            "SELECT id, event_type, url, after, created_at FROM subscription"
            " WHERE ? IS NULL OR id = ? ORDER BY created_at, id",
            (subscription_id, subscription_id),
        ).fetchall()
        return [
            Subscription(id_, self.context, event_type, redact_urls(url), after, created_at)
            for id_, event_type, url, after, created_at in rows
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
        """Up to ``limit`` deliveries that are due, oldest due first; each is claimed for
        ``lease`` seconds (renew the claims of attempts under way: :meth:`renew`): while
        it holds, no other dispatcher claims it; one that dies mid-attempt leaves it to
        the others (or to itself started again) once it lapses. The transaction takes the
        write lock before it reads, so two dispatchers claim disjoint deliveries."""
        with self._transaction() as db:
            now = time.time()  # (taken with the lock: claims of one delivery only grow)
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
        return [
            Due(s, e, attempts, url, self.keys.open(secret, f"subscription {s}"), body, now + lease)
            for s, e, attempts, url, secret, body in rows
        ]

    def renew(self, claims: Sequence[Due], lease: float) -> list[Due]:
        """Extend the claims still held by ``lease`` seconds from now; returns them, with
        their new ``until``. A claim that lapsed and was taken by another dispatcher (or
        whose delivery was recorded, or removed with its subscription) is left out."""
        kept: list[Due] = []
        with self._transaction() as db:
            until = time.time() + lease
            for due in claims:
                changed = db.execute(
                    "UPDATE delivery SET due = ? WHERE subscription_id = ? AND event_id = ?"
                    " AND state = 'pending' AND due = ?",
                    (until, due.subscription_id, due.event_id, due.until),
                ).rowcount
                if changed:
                    kept.append(due._replace(until=until))
        return kept

    def next_due(self) -> float | None:
        (due,) = self.db.execute("SELECT min(due) FROM delivery WHERE state = 'pending'").fetchone()
        return None if due is None else float(due)

    def record(
        self, due: Due, *, delivered: bool, reason: str = "", retry_at: float = 0
    ) -> str | None:
        """Record an attempt: done, due again at ``retry_at``, or (``retry_at`` 0) parked.
        Returns the delivery's new state, or None when nothing was recorded: a failed
        attempt whose claim (``due.until``) lapsed and was taken by another dispatcher
        counts for nothing (the other's attempt decides). A successful one is recorded
        whoever holds the delivery now, even parked meanwhile: it reached the receiver."""
        state = "delivered" if delivered else ("pending" if retry_at else "parked")
        mine = "state != 'delivered'" if delivered else "state = 'pending' AND due = ?"
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE delivery SET state = ?, attempts = attempts + 1, due = ?, reason = ?,"
                f" updated_at = ? WHERE subscription_id = ? AND event_id = ? AND {mine}",
                (state, retry_at, reason or None, _now_text(), due.subscription_id, due.event_id)
                + (() if delivered else (due.until,)),
            ).rowcount
            if delivered:
                self._forget_delivered(db, due.event_id)
        return state if changed else None

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
        return [DeadLetter(r[0], redact_urls(r[1]), *r[2:]) for r in rows]

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
