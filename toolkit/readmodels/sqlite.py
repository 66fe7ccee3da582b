"""SQLite read models, the default backend: a projection's home is the folder holding
the generations of its read model (see :mod:`toolkit.readmodels.interface`).

Generations are ``g000001.sqlite``, ``g000002.sqlite``, ...; ``CURRENT`` names the one
readers use and ``BUILDING`` the one an unfinished replay writes. Both markers are
written to a temporary file, synced and renamed over the old one, so a process killed at
any point leaves the old name or the new, never a part of one; switching readers is that
rename of ``CURRENT``. Lock files keep writers apart: one live projector (or any number
of slice workers, sharing the lock) and one replay at a time.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

from toolkit import locks
from toolkit.config import SQLiteTuning
from toolkit.errors import MarkerError, ProjectionBusyError
from toolkit.readmodels import tables
from toolkit.readmodels.interface import (
    SLICE_WORKERS,
    Connection,
    Dialect,
    Generation,
    ReadModelHome,
)

_GENERATION = re.compile(r"g(\d{6})\.sqlite")


_IDLE_READERS = 64
"""Read-only connections to the current generation a home keeps between reads."""


class SQLiteConnection(sqlite3.Connection):
    """A ``sqlite3.Connection`` that says its dialect (and the file it opened)."""

    dialect: ClassVar[Dialect] = Dialect.SQLITE
    path: Path


def connect(
    path: Path, *, readonly: bool = False, tuning: SQLiteTuning | None = None
) -> SQLiteConnection:
    """A connection to the generation at ``path``: a reader's with SQLite's defaults, or
    a writer's in WAL mode, set up as ``tuning`` says (default: the environment's)."""
    if readonly:
        db = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, check_same_thread=False, factory=SQLiteConnection
        )
    else:
        db = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, factory=SQLiteConnection
        )
        db.execute("PRAGMA journal_mode=WAL")
        (page_size,) = db.execute("PRAGMA page_size").fetchone()
        for pragma in (tuning or SQLiteTuning.from_env()).pragmas(page_size):
            db.execute(pragma)
    db.execute("PRAGMA busy_timeout=5000")
    db.path = path
    return db


def _sync_folder(folder: Path) -> None:
    """Make a rename or removal in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with a file holding ``text``: written and synced under a name
    of its own, then renamed over it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _sync_folder(path.parent)


class SQLiteHome(ReadModelHome):
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

    def _marker(self, name: str, remedy: Callable[[], str]) -> Path | None:
        """The generation a marker names (None without the marker); a marker that
        names none is refused with its path and ``remedy``."""
        marker = self.path / name
        try:
            text = marker.read_bytes().decode(errors="replace").strip()
        except FileNotFoundError:
            return None
        if not _GENERATION.fullmatch(text):
            held = f"holds {text[:40]!r}" if text else "is empty"
            raise MarkerError(
                f"the marker {marker} should name a generation of projection {self.name} "
                f"(like g000001.sqlite) but {held}: {remedy()}"
            )
        return self.path / text

    def current(self) -> Path | None:
        """The generation readers use, or None before the first one."""
        return self._marker(
            "CURRENT",
            lambda: (
                "write into it the name of the generation readers should use (there "
                f"are: {', '.join(p.name for p in self.generations()) or 'none'}), or remove "
                f"it and run 'toolkit replay {self.name}'"
            ),
        )

    def building(self) -> Path | None:
        """The generation an unfinished replay was writing, if any."""
        return self._marker(
            "BUILDING", lambda: f"remove it and run 'toolkit replay {self.name}' (it starts over)"
        )

    def mark_building(self, generation: Generation | None) -> None:
        marker = self.path / "BUILDING"
        if generation is None:
            marker.unlink(missing_ok=True)
            _sync_folder(self.path)
        else:
            _write_atomically(marker, generation.name + "\n")

    def generations(self) -> list[Path]:
        return sorted(p for p in self.path.iterdir() if _GENERATION.fullmatch(p.name))

    def new_generation(self) -> Path:
        numbers = [
            int(m.group(1)) for p in self.generations() if (m := _GENERATION.fullmatch(p.name))
        ]
        return self.path / f"g{max(numbers, default=0) + 1:06d}.sqlite"

    def switch_to(self, generation: Generation) -> None:
        """Point readers at ``generation`` atomically."""
        _write_atomically(self.path / "CURRENT", generation.name + "\n")

    def drop(self, generation: Generation) -> None:
        # The database file last: while it is there, the generation is listed, and a
        # drop cut short is done again (see toolkit.read.replay).
        for suffix in ("-wal", "-shm", ""):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path / f"{generation.name}{suffix}")

    @contextlib.contextmanager
    def writer_lock(self, holder: str | None = None) -> Iterator[None]:
        """Held by whoever writes the projection (or a replay: ``"replay"``); a second
        one is refused. Slice workers (:data:`SLICE_WORKERS`) hold the projection's lock
        shared, so that they and a worker of the whole never run together."""
        shared = holder == SLICE_WORKERS
        name = "lock" if holder is None or shared else f"lock.{holder}"
        with self._flock(name, shared=shared):
            yield

    @contextlib.contextmanager
    def _flock(self, name: str, *, shared: bool = False) -> Iterator[None]:
        busy = ProjectionBusyError(
            f"projection {self.name} is being written by another process "
            f"(lock {self.path / name}"
            + (
                ", held by a worker of the whole stream, a rewind or a dead letter retry"
                if shared
                else ""
            )
            + "); stop it first"
        )
        with locks.file_lock(self.path / name, shared=shared, refused=lambda _: busy):
            yield

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
            db.execute(tables.PROBE).fetchall()
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


def __getattr__(name: str) -> type[SQLiteHome]:
    """``ProjectionHome``, this class's name in toolkit 0.1, for one more release."""
    if name == "ProjectionHome":
        import warnings

        warnings.warn(
            "ProjectionHome is now SQLiteHome (toolkit.readmodels.sqlite); the old name goes "
            "in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return SQLiteHome
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
