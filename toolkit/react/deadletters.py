"""A policy's dead letters: the messages it recorded as processed without their effects,
and why, in a SQLite file of its own (``<data dir>/policies/<policy>.sqlite``).

Two kinds: ``parked``, a message whose reaction kept failing (retried ``Policy.retries``
times) or one held behind it, and ``rejected``, one a command refused
(:class:`~toolkit.errors.InvalidCommand`) or that the stream's relay did not publish.

Parking is per aggregate, as a projection's (:mod:`toolkit.read.parking`, whose
:class:`~toolkit.read.parking.Parking` this reuses): a message that keeps failing holds
its aggregate (the subject's id token) parked, and every later message of that aggregate
is parked behind it (reason ``parked behind <stream> sequence <N>``), not reacted to out
of order, until the first is retried (the held ones are then retried in order,
:mod:`toolkit.react.retries`) or dropped (its aggregate's new messages are reacted to
again; those held behind it stay dead letters). A rejection holds nothing: the context
answered, and its aggregate goes on.

A parked message is written here *before* its tracking record goes into the context's
log: after a crash between the two it is still a dead letter when delivered again
(:meth:`kept`), so it is passed over, not reacted to behind its own dead letter. A
rejection is written *after* its tracking record (the runner records it first): a crash
between loses its reason, never its processing.

The file also remembers, for each stream, the last foreign log position the policy reacted
to (:meth:`remember`), so that events a relay publishes again under new sequences, after
its stream lost them, are known after a restart too (see :class:`~toolkit.react.runner.Memory`).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, NamedTuple

import orjson

from toolkit.read.parking import Parking
from toolkit.read.reader import StreamMessage
from toolkit.wire import check_name
from toolkit.wire.subjects import aggregate_token

Kind = Literal["parked", "rejected"]

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS dead_letters (
    stream TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    type TEXT,
    reason TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (stream, sequence)
)""",
    """
CREATE TABLE IF NOT EXISTS parked (
    stream TEXT NOT NULL,
    aggregate TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    PRIMARY KEY (stream, aggregate)
)""",
    """
CREATE TABLE IF NOT EXISTS reacted_to (
    stream TEXT PRIMARY KEY,
    log_position INTEGER NOT NULL
)""",
)


class DeadLetter(NamedTuple):
    stream: str
    sequence: int
    kind: str
    subject: str
    type: str | None
    reason: str
    headers: dict[str, str]
    body: bytes
    at: float

    def message(self) -> StreamMessage:
        """The stream message it keeps."""
        return StreamMessage(self.stream, self.sequence, self.subject, self.headers, self.body)


def dead_letters_path(data_dir: Path | str, policy: str) -> Path:
    """Where the dead letters of ``policy`` are kept in a data folder."""
    return Path(data_dir) / "policies" / f"{check_name('policy', policy)}.sqlite"


def count_dead_letters(path: Path) -> dict[str, int]:
    """How many dead letters of each kind the file holds, read only: nothing is created
    (no file yet: none)."""
    if not path.exists():
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT kind, count(*) FROM dead_letters GROUP BY kind").fetchall()
    except sqlite3.OperationalError:  # a file being created: no table yet
        return {}
    finally:
        db.close()
    return {kind: int(n) for kind, n in rows}


class PolicyDeadLetters:
    """The dead letters of one policy, in a SQLite file (created when opened), with the
    aggregates they hold parked."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        for statement in _SCHEMA:
            self._db.execute(statement)
        self._lock = threading.Lock()  # the reactor may write from a worker thread
        self.parking = self._parking()
        """Parked aggregates, and every dead letter (those the tracking record has not
        passed yet are :meth:`kept` when they come again)."""

    def _parking(self) -> Parking:
        parked = self._db.execute("SELECT stream, aggregate, sequence FROM parked").fetchall()
        ahead = self._db.execute("SELECT stream, sequence FROM dead_letters").fetchall()
        return Parking.from_rows(parked, ahead)

    def refresh(self) -> None:
        """Read the parked aggregates and dead letters again: the workers of a policy cut
        into slices share the file, and one that gains a slice must know what the
        slice's last worker parked (else it would react to a parked aggregate's later
        messages, out of order)."""
        with self._lock:
            self.parking = self._parking()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _insert(
        self, db: sqlite3.Connection, message: StreamMessage, kind: Kind, type_: str | None,
        reason: str,
    ) -> None:  # fmt: skip
        db.execute(
            "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                message.stream,
                message.sequence,
                kind,
                message.subject,
                type_,
                reason,
                orjson.dumps(message.headers).decode(),
                message.data,
                time.time(),
            ),
        )

    def keep(self, message: StreamMessage, kind: Kind, type_: str | None, reason: str) -> None:
        """Keep ``message`` with its reason, holding nothing parked; again for the same
        (stream, sequence) replaces it (a park repeated after a crash)."""
        with self._transaction() as db:
            self._insert(db, message, kind, type_, reason)
        self.parking.parked_one(message.stream, message.sequence, None)

    def park(self, message: StreamMessage, type_: str | None, reason: str) -> None:
        """Keep ``message``, whose reaction keeps failing, and hold its aggregate parked
        behind it (unless it already is, behind an earlier one)."""
        aggregate = aggregate_token(message.subject)
        with self._transaction() as db:
            self._insert(db, message, "parked", type_, reason)
            db.execute(
                "INSERT OR IGNORE INTO parked VALUES (?, ?, ?)",
                (message.stream, aggregate, message.sequence),
            )
        self.parking.parked_one(message.stream, message.sequence, aggregate)

    def hold(self, message: StreamMessage, type_: str | None, root: int) -> None:
        """Keep ``message`` parked behind its aggregate's dead letter at ``root``."""
        self.keep(message, "parked", type_, f"parked behind {message.stream} sequence {root}")

    def holding(self, stream: str, aggregate: str) -> int | None:
        """The sequence of the dead letter ``aggregate`` is parked behind, if any."""
        return self.parking.holding(stream, aggregate)

    def kept(self, stream: str, sequence: int) -> bool:
        """Whether the message at ``sequence`` is a dead letter already."""
        return (stream, sequence) in self.parking.ahead

    def letters(self) -> list[DeadLetter]:
        """Every dead letter, by stream and sequence."""
        with self._lock:
            rows = self._db.execute(
                "SELECT stream, sequence, kind, subject, type, reason, headers, body, at "
                "FROM dead_letters ORDER BY stream, sequence"
            ).fetchall()
        return [
            DeadLetter(s, n, k, subj, t, r, orjson.loads(h), bytes(b), at)
            for s, n, k, subj, t, r, h, b, at in rows
        ]

    def settle(self, stream: str, sequence: int) -> bool:
        """Remove the dead letter at ``sequence`` (reacted to again, or given up) and
        release the aggregate it held; whether it was there."""
        with self._transaction() as db:
            gone = db.execute(
                "DELETE FROM dead_letters WHERE stream = ? AND sequence = ?", (stream, sequence)
            ).rowcount
            db.execute("DELETE FROM parked WHERE stream = ? AND sequence = ?", (stream, sequence))
        self.parking.release(stream, sequence)
        return bool(gone)

    def rejected_now(self, stream: str, sequence: int, reason: str) -> None:
        """The dead letter at ``sequence``, retried, was refused by a command: it is a
        rejection now, and holds its aggregate no more."""
        with self._transaction() as db:
            db.execute(
                "UPDATE dead_letters SET kind = 'rejected', reason = ?, at = ? "
                "WHERE stream = ? AND sequence = ?",
                (reason, time.time(), stream, sequence),
            )
            db.execute("DELETE FROM parked WHERE stream = ? AND sequence = ?", (stream, sequence))
        self.parking.release(stream, sequence)
        self.parking.parked_one(stream, sequence, None)  # still a dead letter

    def failed_again(self, letter: DeadLetter, reason: str) -> None:
        """``letter``, retried, failed again: keep the new reason; when its aggregate is
        parked behind nothing any more (what held it was retried), it holds it now."""
        aggregate = aggregate_token(letter.subject)
        with self._transaction() as db:
            db.execute(
                "UPDATE dead_letters SET reason = ?, at = ? WHERE stream = ? AND sequence = ?",
                (reason, time.time(), letter.stream, letter.sequence),
            )
            db.execute(
                "INSERT OR IGNORE INTO parked VALUES (?, ?, ?)",
                (letter.stream, aggregate, letter.sequence),
            )
        self.parking.parked_one(letter.stream, letter.sequence, aggregate)

    def reacted_to(self) -> dict[str, int]:
        """The last foreign log position reacted to, by stream."""
        with self._lock:
            rows = self._db.execute("SELECT stream, log_position FROM reacted_to").fetchall()
        return {stream: int(position) for stream, position in rows}

    def remember(self, positions: dict[str, int]) -> None:
        """Keep ``positions`` (stream -> last foreign log position reacted to); a position
        never goes back. A hint, written after each batch: when another process holds the
        file's write lock for more than a moment (a worker of the same policy paused in
        the middle of its own write), it is left for the next batch's, which writes every
        position again, rather than hold this worker's batches (and its leases) up."""
        rows = list(positions.items())
        with self._lock:
            self._db.execute("PRAGMA busy_timeout=100")  # (5 s for everything else)
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc):
                    return
                raise
            finally:
                self._db.execute("PRAGMA busy_timeout=5000")
            try:
                self._db.executemany(
                    "INSERT INTO reacted_to (stream, log_position) VALUES (?, ?) "
                    "ON CONFLICT (stream) DO UPDATE SET "
                    "log_position = MAX(log_position, excluded.log_position)",
                    rows,
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> PolicyDeadLetters:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
