"""A policy's dead letters: the messages it recorded as processed without their effects,
and why, in a SQLite file of its own (``<data dir>/policies/<policy>.sqlite``).

Two kinds: ``parked``, a message whose reaction kept failing (retried
``Policy.retries`` times), and ``rejected``, one a command refused
(:class:`~toolkit.errors.InvalidCommand`) or that the stream's relay did not publish.

A parked message is written here *before* its tracking record goes into the context's
log: a crash between the two leaves it unprocessed, so it fails and is parked again, and
the row keyed by (stream, sequence) is written again, not twice. A rejection is written
*after* its tracking record (the runner records it first): a crash between loses its
reason, never its processing.

In this step the message alone is parked, not the rest of its aggregate: later messages
of the same aggregate are reacted to (a projection can park aggregates; a policy not yet).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Literal, NamedTuple

import orjson

from toolkit.read.reader import StreamMessage
from toolkit.wire import check_name

Kind = Literal["parked", "rejected"]

_SCHEMA = """
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
)
"""


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


def dead_letters_path(data_dir: Path | str, policy: str) -> Path:
    """Where the dead letters of ``policy`` are kept in a data folder."""
    return Path(data_dir) / "policies" / f"{check_name('policy', policy)}.sqlite"


class PolicyDeadLetters:
    """The dead letters of one policy, in a SQLite file (created when opened)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(_SCHEMA)

    def keep(self, message: StreamMessage, kind: Kind, type_: str | None, reason: str) -> None:
        """Keep ``message`` with its reason; again for the same (stream, sequence)
        replaces it (a park repeated after a crash)."""
        self._db.execute(
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

    def letters(self) -> list[DeadLetter]:
        """Every dead letter, by stream and sequence."""
        rows = self._db.execute(
            "SELECT stream, sequence, kind, subject, type, reason, headers, body, at "
            "FROM dead_letters ORDER BY stream, sequence"
        ).fetchall()
        return [
            DeadLetter(s, n, k, subj, t, r, orjson.loads(h), bytes(b), at)
            for s, n, k, subj, t, r, h, b, at in rows
        ]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> PolicyDeadLetters:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
