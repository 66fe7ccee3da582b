"""Locks between processes that go when their holder goes, however it goes (SIGKILL
included): the one owner of the toolkit's file locks and PostgreSQL advisory locks.

A projection's writers (:mod:`toolkit.readmodels`) and a context's relay
(:mod:`toolkit.write.relay_lock`) take them. Both are non-blocking: a second holder is
refused at once, and told who holds the lock where that can be known, rather than waiting
behind a process that may run for days. Callers turn :class:`LockHeld` into their own
error, which says what to stop.

- :func:`file_lock`: ``flock(2)``, exclusive or shared, on a file that is never removed
  (removing it would let a second process lock a new file of the same name). The kernel
  releases it with its holder's last descriptor. No library: ``filelock`` has no shared
  mode and blocks with a timeout, ``portalocker`` would be a dependency for these few
  lines of ``fcntl``; neither writes who holds the lock into the file for the refused.
- :func:`try_advisory_lock`: a session advisory lock, on a connection the caller keeps
  open for as long as it holds the lock (the server releases it when the session ends),
  keyed by a label in the toolkit's own namespace; :func:`advisory_holder` names the
  session holding one.

A kernel module: it imports nothing from the toolkit (psycopg only for its types).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "LockHeld",
    "advisory_holder",
    "advisory_key",
    "advisory_xact_lock",
    "file_lock",
    "try_advisory_lock",
]


class LockHeld(Exception):
    """Another process holds the lock. ``written``: what the holder wrote into the lock
    file (empty when it wrote nothing)."""

    def __init__(self, path: Path, written: bytes = b"") -> None:
        super().__init__(f"the lock {path} is held by another process")
        self.path = path
        self.written = written


@contextlib.contextmanager
def file_lock(
    path: Path,
    *,
    shared: bool = False,
    holder: bytes | None = None,
    refused: Callable[[LockHeld], Exception] | None = None,
) -> Iterator[int]:
    """Hold an ``flock`` on ``path`` (created if missing) while the block runs: shared
    with other shared holders, or exclusive. When another process holds it in a mode
    that excludes this one, raises at once :class:`LockHeld`, or what ``refused`` makes
    of it (the caller's own error: only a refusal to take this lock becomes it, never
    what the block raises). ``holder`` (exclusive locks only) is written into the file,
    for :attr:`LockHeld.written` of the next one refused. Yields the lock file's
    descriptor: a child process given a copy of it holds the lock too, until it exits."""
    if shared and holder is not None:
        raise ValueError("a shared lock has many holders: it names none")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            held = LockHeld(path, os.pread(fd, 4096, 0))
            raise (held if refused is None else refused(held)) from None
        if holder is not None:
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder, 0)
        yield fd
    finally:
        os.close(fd)  # which releases the lock


def advisory_key(label: str) -> int:
    """A 64-bit advisory lock key for ``label``, in the toolkit's own namespace."""
    digest = hashlib.blake2b(f"toolkit:{label}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def try_advisory_lock(
    db: psycopg.Connection[Any], label: str, *, shared: bool = False, settle: float = 2.0
) -> bool:
    """Take the session advisory lock of ``label`` on ``db`` (shared with other shared
    holders, or exclusive) if no other session holds it so as to exclude this one;
    whether it was taken. It is held until ``db`` closes.

    A holder whose connection has just closed keeps the lock until its server process has
    gone, a moment later (longer on a busy server): while the lock is refused but no
    session is seen holding it, it is asked for again, for up to ``settle`` seconds, so
    that a process started as its predecessor stops is not refused for that."""
    function = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
    deadline = time.monotonic() + settle
    while True:
        row = db.execute(f"SELECT {function}(%s)", (advisory_key(label),)).fetchone()
        if row and row[0]:
            return True
        if _holding(db, label) is not None or time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def advisory_xact_lock(db: psycopg.Connection[Any], label: str) -> None:
    """Wait for, and take, the transaction advisory lock of ``label`` on ``db``: held
    until the transaction that ``db`` is in ends."""
    db.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_key(label),))


def advisory_holder(db: psycopg.Connection[Any], label: str) -> str:
    """Who holds the advisory lock of ``label`` in ``db``'s database: its session's
    application name, address and start."""
    row = _holding(db, label)
    if row is None:
        return "its session has just ended: try again"
    application, address, started = row
    where = f" from {address}" if address else ""
    return f"{application or 'a session'}{where}, connected since {started:%Y-%m-%dT%H:%M:%S%z}"


def _holding(db: psycopg.Connection[Any], label: str) -> tuple[Any, ...] | None:
    """The application name, address and start of a session granted the advisory lock
    of ``label`` in ``db``'s database, if one is."""
    key = advisory_key(label)
    row: tuple[Any, ...] | None = db.execute(
        "SELECT a.application_name, a.client_addr, a.backend_start FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
        "AND l.granted AND l.classid = %s AND l.objid = %s AND l.objsubid = 1 "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
    ).fetchone()
    return row
