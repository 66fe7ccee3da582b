"""SQLite read models, the default backend: a projection's home is the folder holding
the generations of its read model (see :mod:`toolkit.readmodel`).

Generations are ``g000001.sqlite``, ``g000002.sqlite``, ...; ``CURRENT`` names the one
readers use and ``BUILDING`` the one an unfinished replay writes. Switching readers is
an atomic rename of ``CURRENT``. Lock files keep writers apart: one live projector (or
one per partition) and one replay at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from toolkit.errors import ProjectionBusyError
from toolkit.readmodel import Connection, Dialect, Generation, ReadModelHome

_GENERATION = re.compile(r"g(\d{6})\.sqlite")


_IDLE_READERS = 64
"""Read-only connections to the current generation a home keeps between reads."""


class SQLiteConnection(sqlite3.Connection):
    """A ``sqlite3.Connection`` that says its dialect (and the file it opened)."""

    dialect: ClassVar[Dialect] = Dialect.SQLITE
    path: Path


def connect(path: Path, *, readonly: bool = False) -> SQLiteConnection:
    if readonly:
        db = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, check_same_thread=False, factory=SQLiteConnection
        )
    else:
        db = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, factory=SQLiteConnection
        )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=5000")
    db.path = path
    return db


class ProjectionHome(ReadModelHome):
    """The folder of one projection: its generations, ``CURRENT`` and its writer lock."""

    dialect = Dialect.SQLITE

    def __init__(self, data_dir: Path | str, name: str) -> None:
        self.name = name
        self.path = Path(data_dir) / "projections" / name
        self.path.mkdir(parents=True, exist_ok=True)
        self._guard = threading.Lock()
        self._idle: list[SQLiteConnection] = []
        """Read-only connections to ``_idle_generation`` kept for the next readers (they
        see each commit, as they leave no transaction open)."""
        self._idle_generation: Path | None = None

    @property
    def _pointer(self) -> Path:
        return self.path / "CURRENT"

    def current(self) -> Path | None:
        """The generation readers use, or None before the first one."""
        try:
            name = self._pointer.read_text().strip()
        except FileNotFoundError:
            return None
        return self.path / name

    def building(self) -> Path | None:
        """The generation an unfinished replay was writing, if any."""
        try:
            return self.path / (self.path / "BUILDING").read_text().strip()
        except FileNotFoundError:
            return None

    def mark_building(self, generation: Generation | None) -> None:
        marker = self.path / "BUILDING"
        if generation is None:
            marker.unlink(missing_ok=True)
        else:
            marker.write_text(generation.name + "\n")

    def generations(self) -> list[Path]:
        return sorted(p for p in self.path.iterdir() if _GENERATION.fullmatch(p.name))

    def new_generation(self) -> Path:
        numbers = [
            int(m.group(1)) for p in self.generations() if (m := _GENERATION.fullmatch(p.name))
        ]
        return self.path / f"g{max(numbers, default=0) + 1:06d}.sqlite"

    def switch_to(self, generation: Generation) -> None:
        """Point readers at ``generation`` atomically."""
        tmp = self._pointer.with_suffix(".tmp")
        tmp.write_text(generation.name + "\n")
        with open(tmp) as f:
            os.fsync(f.fileno())
        os.replace(tmp, self._pointer)

    def drop(self, generation: Generation) -> None:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path / f"{generation.name}{suffix}")

    @contextlib.contextmanager
    def writer_lock(self, partition: int | str | None = None) -> Iterator[None]:
        """Held by whoever writes the projection (or one partition of it, or a replay:
        ``"replay"``); a second one is refused."""
        name = "lock" if partition is None else f"lock.{partition}"
        fd = os.open(self.path / name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ProjectionBusyError(
                    f"projection {self.name} is being written by another process "
                    f"(lock {self.path / name}); stop it first"
                ) from None
            yield
        finally:
            os.close(fd)

    def _open(self, generation: Generation) -> Connection | None:
        path = self.path / generation.name
        with self._guard:
            stale: list[SQLiteConnection] = []
            if path != self._idle_generation:  # switched: the old generation's go
                stale, self._idle, self._idle_generation = self._idle, [], path
            idle = self._idle.pop() if self._idle else None
        for old in stale:
            old.close()
        if idle is not None:
            return idle
        db = None
        try:
            db = connect(path, readonly=True)
            db.execute("SELECT 1 FROM toolkit_checkpoint LIMIT 1").fetchall()
            return db
        except sqlite3.Error:
            if db is not None:
                db.close()
            return None

    def close_reader(self, db: Connection, *, reusable: bool = True) -> None:
        with self._guard:
            if (
                reusable
                and isinstance(db, SQLiteConnection)
                and db.path == self._idle_generation
                and len(self._idle) < _IDLE_READERS
            ):
                self._idle.append(db)
                return
        db.close()

    def close(self) -> None:
        with self._guard:
            idle, self._idle = self._idle, []
        for db in idle:
            db.close()
