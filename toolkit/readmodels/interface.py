"""Where read models live: the interface of the read-model backends.

A projection's read model is kept in *generations*, each a whole copy of its tables,
checkpoints and dead letters. A *home* holds one projection's generations: it names the
one readers use (switched atomically), the one an unfinished replay is building, and
keeps writers apart. Two backends implement it beside this module:

- SQLite files, the default (:mod:`toolkit.readmodels.sqlite`): ``<data dir>/projections/<name>/``
  holds ``g000001.sqlite``, ... and a ``CURRENT`` file; locks are ``flock``\\ s.
- PostgreSQL schemas (:mod:`toolkit.readmodels.postgres`), chosen by
  ``TOOLKIT_READ_MODEL_URL=postgresql://...``: schemas ``<name>_g000001``, ..., the
  pointer a row of ``toolkit.read_model``; locks are advisory locks.

A projection gets the backend's own DB-API connection (``sqlite3.Connection`` or
``psycopg.Connection``), which carries its :class:`Dialect` for the SQL that differs.
"""

from __future__ import annotations

import contextlib
import functools
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from contextlib import AbstractContextManager


class Dialect(StrEnum):
    """The SQL a read model's connection speaks."""

    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"

    @property
    def param(self) -> str:
        """The parameter placeholder: ``?`` on SQLite, ``%s`` on PostgreSQL."""
        return "?" if self is Dialect.SQLITE else "%s"

    def sql(self, statement: str) -> str:
        """``statement``, written with ``?`` placeholders, in this dialect."""
        return statement if self is Dialect.SQLITE else _percent(statement)

    @property
    def begin(self) -> str:
        """Starts a writing transaction (on SQLite it takes the write lock at once: one
        writer at a time)."""
        return "BEGIN IMMEDIATE" if self is Dialect.SQLITE else "BEGIN"

    def generation_lock(self, *, shared: bool, schema: str = "current_schema()") -> str | None:
        """What a writing transaction runs after :attr:`begin` to lock the generation it
        writes against other writers (``shared``: writers that may run together; else
        creating tables or cutting a stream into slices), where ``begin`` alone does not
        (None). The generation is the schema named by the SQL expression ``schema``."""
        if self is Dialect.SQLITE:
            return None
        function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
        return f"SELECT {function}(hashtext('toolkit.generation'), hashtext({schema}))"

    @property
    def bigint(self) -> str:
        """A column type for 64-bit integers (stream sequences, log positions)."""
        return "INTEGER" if self is Dialect.SQLITE else "BIGINT"

    @property
    def blob(self) -> str:
        """A column type for bytes."""
        return "BLOB" if self is Dialect.SQLITE else "BYTEA"

    @property
    def list_tables(self) -> str:
        """Lists the generation's tables (the database's own left out) as ``name``."""
        if self is Dialect.SQLITE:
            return (
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        return (
            "SELECT table_name AS name FROM information_schema.tables "
            "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
        )


@functools.cache
def _percent(statement: str) -> str:
    return statement.replace("?", "%s")


class Rows(Protocol):
    """What ``execute`` returns: a DB-API cursor."""

    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """The connection a projection writes and a read endpoint reads through: the
    backend's DB-API connection with its ``dialect``, and ``executemany`` on both."""

    @property
    def dialect(self) -> Dialect: ...
    @property
    def Error(self) -> type[Exception]: ...  # DB-API's name for the driver's errors
    def execute(self, sql: str, parameters: Any = ..., /) -> Rows: ...
    def executemany(self, sql: str, parameters: Iterable[Any], /) -> object: ...
    def close(self) -> None: ...


def insert_rows(
    db: Connection, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """Insert ``rows`` (values of ``columns``, in order) into ``table``, as fast as the
    backend allows: ``COPY`` on PostgreSQL (one statement for them all, where
    ``executemany`` sends a statement a row), ``executemany`` on SQLite. For plain inserts
    only: no ``ON CONFLICT``; a row that breaks a constraint fails them all, as it would
    fail the batch."""
    copy = getattr(db, "copy_rows", None)
    if copy is not None:
        copy(table, columns, rows)
        return
    marks = ", ".join(db.dialect.param for _ in columns)
    db.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)


class Generation(Protocol):
    """One generation of a read model: a ``Path`` on SQLite, a schema on PostgreSQL."""

    @property
    def name(self) -> str:
        """The file's or the schema's name."""
        ...

    @property
    def stem(self) -> str:
        """``g000001``: the generation's number, as readers are told it."""
        ...

    def exists(self) -> bool: ...


SLICE_WORKERS = "slices"
"""The :meth:`ReadModelHome.writer_lock` of a sliced projection's workers: shared."""


class ReadModelHome(ABC):
    """The generations of one projection's read model, the pointer readers follow, and
    the locks that keep its writers apart."""

    name: str
    dialect: Dialect

    @abstractmethod
    def current(self) -> Generation | None:
        """The generation readers use, or None before the first one."""

    @abstractmethod
    def building(self) -> Generation | None:
        """The generation an unfinished replay was writing, if any."""

    @abstractmethod
    def mark_building(self, generation: Generation | None) -> None:
        """Record (or clear) the generation a replay is writing."""

    @abstractmethod
    def generations(self) -> Sequence[Generation]:
        """Every generation there is, oldest first."""

    @abstractmethod
    def new_generation(self) -> Generation:
        """A generation after every existing one (not created yet)."""

    @abstractmethod
    def switch_to(self, generation: Generation) -> None:
        """Point readers at ``generation`` atomically."""

    @abstractmethod
    def drop(self, generation: Generation) -> None:
        """Delete a generation (readers still on it finish first, or retry)."""

    @abstractmethod
    def writer_lock(self, holder: str | None = None) -> AbstractContextManager[None]:
        """Held by whoever writes the projection (or a replay: ``"replay"``); a second
        one is refused with
        :class:`~toolkit.errors.ProjectionBusyError`. The workers of a sliced projection
        (:data:`SLICE_WORKERS`) hold it shared, any number at once: what needs the
        projection stopped (a worker of the whole, a rewind, a dead letter retry) is
        refused while they run, and they while it does."""

    @abstractmethod
    def _open(self, generation: Generation) -> Connection | None:
        """A read-only connection to ``generation`` whose toolkit tables answer, or None
        when the generation is gone (dropped by a replay just now)."""

    def close_reader(self, db: Connection, *, reusable: bool = True) -> None:
        """Give back a connection :meth:`open_reader` gave: a backend may keep a
        ``reusable`` one for the next reader (opening one costs more than a small read)."""
        db.close()

    @abstractmethod
    def close(self) -> None:
        """Release what the home holds open (connections kept for readers)."""

    def live(self) -> Generation:
        """The generation the live projector writes, created on first use."""
        current = self.current()
        if current is None:
            current = self.new_generation()
            self.switch_to(current)
        return current

    def open_reader(self) -> tuple[Generation, Connection] | None:
        """The generation readers use and a read-only connection to it (give it back
        with :meth:`close_reader`), or None before there is a model."""
        for _ in range(3):  # a replay may switch (and drop) the generation just read
            current = self.current()
            if current is None:
                return None
            db = self._open(current)
            if db is not None:
                return current, db
        return None

    @contextlib.contextmanager
    def reader(self) -> Iterator[Connection | None]:
        """A read-only connection to the current generation (None before there is one)."""
        opened = self.open_reader()
        if opened is None:
            yield None
            return
        try:
            yield opened[1]
        finally:
            self.close_reader(opened[1])
