"""PostgreSQL read models: a projection's generations are schemas of one database (see
:mod:`toolkit.readmodels.interface`), chosen with ``TOOLKIT_READ_MODEL_URL=postgresql://...``.

Generation n of projection ``shipping`` is the schema ``shipping_g00000n``, holding the
projection's tables and the toolkit's (checkpoints, dead letters, cuts into slices); a
connection to it has that schema alone on its search path, so the projection's SQL names
its tables unqualified. The table ``toolkit.read_model`` has a row a projection naming
the generation readers use (``current``) and the one an unfinished replay is building
(``building``): switching readers is one statement. Writers are kept apart by session
advisory locks, keyed by projection (or ``replay``; slice workers share the projection's).
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import psycopg
from psycopg import sql

from toolkit import locks
from toolkit.errors import ConfigurationError, MarkerError, ProjectionBusyError
from toolkit.readmodels import tables
from toolkit.readmodels.interface import (
    SLICE_WORKERS,
    Connection,
    Dialect,
    Generation,
    ReadModelHome,
)

_POINTERS = [
    "CREATE SCHEMA IF NOT EXISTS toolkit",
    "CREATE TABLE IF NOT EXISTS toolkit.read_model ("
    " projection TEXT PRIMARY KEY, current TEXT, building TEXT)",
]
_IDLE_READERS = 8
"""Read connections a home keeps open between requests."""


class PostgresConnection(psycopg.Connection[tuple[Any, ...]]):
    """A ``psycopg.Connection`` that says its dialect and has ``executemany``, as a
    ``sqlite3.Connection`` has."""

    dialect: ClassVar[Dialect] = Dialect.POSTGRESQL

    def executemany(self, query: str, params_seq: Iterable[Sequence[Any]], /) -> None:
        with self.cursor() as cursor:
            cursor.executemany(query, params_seq)

    def copy_rows(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """``COPY`` ``rows`` into ``table`` (see :func:`toolkit.readmodels.insert_rows`)."""
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        with self.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)


def _connect(url: str, *, autocommit: bool = True) -> PostgresConnection:
    return PostgresConnection.connect(url, autocommit=autocommit, connect_timeout=10)


def _use(db: PostgresConnection, schema: str, *, local: bool = False) -> None:
    """Put ``schema`` alone on the search path (for the transaction only, with ``local``)."""
    path = sql.Identifier(schema).as_string(db)
    db.execute("SELECT set_config('search_path', %s, %s)", (path, local))


@dataclass(frozen=True)
class SchemaGeneration:
    """A generation of a PostgreSQL read model: a schema of the database at ``url``."""

    url: str = field(repr=False)
    schema: str

    @property
    def name(self) -> str:
        return self.schema

    @property
    def stem(self) -> str:
        return self.schema.rpartition("_")[2]

    def __str__(self) -> str:
        return f"schema {self.schema}"

    def exists(self) -> bool:
        with _connect(self.url) as db:
            found = db.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,))
            return found.fetchone() is not None

    def connect(self, *, readonly: bool = False) -> PostgresConnection:
        """An autocommit connection to the generation; for writing, its schema is
        created first if need be."""
        db = _connect(self.url)
        try:
            if readonly:
                db.execute("SET default_transaction_read_only = on")
            else:
                with db.transaction():  # the same lock as the store's, against racing workers
                    lock = Dialect.POSTGRESQL.generation_lock(shared=False, schema="%s")
                    assert lock is not None
                    db.execute(lock, (self.schema,))
                    schema = sql.Identifier(self.schema)
                    db.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
            _use(db, self.schema)
        except BaseException:
            db.close()
            raise
        return db


class PostgresHome(ReadModelHome):
    """One projection's generations in the database at ``url``, its row of
    ``toolkit.read_model`` and its advisory locks."""

    dialect = Dialect.POSTGRESQL

    def __init__(self, url: str, name: str) -> None:
        if len(f"{name}_g000000".encode()) > 63:
            raise ConfigurationError(
                f"projection name {name!r} is too long for PostgreSQL schema names "
                "(55 bytes at most)"
            )
        self.url = url
        self.name = name
        self._pattern = re.compile(re.escape(name) + r"_g(\d{6})")
        self._guard = threading.Lock()
        self._db: PostgresConnection | None = None
        self._idle: list[PostgresConnection] = []
        self._closed = False

    @property
    def db(self) -> PostgresConnection:
        """The home's own autocommit connection, opened (and the pointer table created)
        on first use, and again after it broke."""
        with self._guard:
            if self._db is None or self._db.closed or self._db.broken:
                db = _connect(self.url)
                (table,) = db.execute("SELECT to_regclass('toolkit.read_model')").fetchone() or (
                    None,
                )
                if table is None:
                    with db.transaction():
                        locks.advisory_xact_lock(db, "toolkit.read_model")
                        for statement in _POINTERS:
                            db.execute(statement)
                self._db = db
            return self._db

    def _execute(self, query: sql.Composed | str, params: tuple[object, ...] = ()) -> list[Any]:
        """Run a statement on the home's connection and fetch its rows, once more on a
        new connection if the server dropped the old one (it restarted)."""
        db = self.db
        try:
            return db.execute(query, params).fetchall()
        except psycopg.OperationalError:
            if not db.broken:
                raise
            return self.db.execute(query, params).fetchall()  # a new connection

    def _generation(self, schema: str) -> SchemaGeneration:
        return SchemaGeneration(self.url, schema)

    def _pointer(self, column: str) -> SchemaGeneration | None:
        rows = self._execute(
            sql.SQL("SELECT {} FROM toolkit.read_model WHERE projection = %s").format(
                sql.Identifier(column)
            ),
            (self.name,),
        )
        if not rows or rows[0][0] is None:
            return None
        schema = rows[0][0]
        if not self._pattern.fullmatch(schema):
            remedy = (
                "set it to the schema readers should use, or to NULL and run"
                if column == "current"
                else "set it to NULL and run"
            )
            raise MarkerError(
                f"toolkit.read_model.{column} of projection {self.name} (database "
                f"{self.db.info.dbname}) should name a schema like {self.name}_g000001 but "
                f"holds {schema[:70]!r}: {remedy} 'toolkit replay {self.name}'"
            )
        return self._generation(schema)

    def _point(self, column: str, schema: str | None) -> None:
        self._execute(
            sql.SQL(
                "INSERT INTO toolkit.read_model (projection, {0}) VALUES (%s, %s) "
                "ON CONFLICT (projection) DO UPDATE SET {0} = excluded.{0} RETURNING 1"
            ).format(sql.Identifier(column)),
            (self.name, schema),
        )

    def current(self) -> SchemaGeneration | None:
        return self._pointer("current")

    def building(self) -> SchemaGeneration | None:
        return self._pointer("building")

    def mark_building(self, generation: Generation | None) -> None:
        self._point("building", None if generation is None else generation.name)

    def switch_to(self, generation: Generation) -> None:
        self._point("current", generation.name)

    def generations(self) -> list[SchemaGeneration]:
        rows = self._execute(
            "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s) ORDER BY nspname",
            (f"{self.name}_g",),
        )
        return [self._generation(n) for (n,) in rows if self._pattern.fullmatch(n)]

    def new_generation(self) -> SchemaGeneration:
        named = [g.name for g in (*self.generations(), self.current(), self.building()) if g]
        numbers = [int(m.group(1)) for n in named if (m := self._pattern.fullmatch(n))]
        return self._generation(f"{self.name}_g{max(numbers, default=0) + 1:06d}")

    def drop(self, generation: Generation) -> None:
        with _connect(self.url) as db, db.transaction():
            table = sql.Identifier(generation.name, tables.PROBED_TABLE)
            (found,) = db.execute("SELECT to_regclass(%s)", (table.as_string(db),)).fetchone() or (
                None,
            )
            if found is not None:
                # Readers hold this table from their first statement to their last: wait
                # for those still reading; any later one finds the schema gone and retries.
                db.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(table))
            db.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(generation.name))
            )

    @contextlib.contextmanager
    def writer_lock(self, holder: str | None = None) -> Iterator[None]:
        """A session advisory lock, held by a connection of its own for as long as the
        block runs; a second one is refused. Slice workers hold the projection's lock
        shared, so that they and a worker of the whole never run together."""
        shared = holder == SLICE_WORKERS
        label = self.name if holder is None or shared else f"{self.name}.{holder}"
        db = _connect(self.url)
        try:
            self._try_lock(db, label, shared=shared)
            yield
        finally:
            db.close()  # which releases the locks

    def _try_lock(self, db: PostgresConnection, label: str, *, shared: bool = False) -> None:
        if not locks.try_advisory_lock(db, label, shared=shared):
            whole = ", held by its worker of the whole stream" if shared else ""
            raise ProjectionBusyError(
                f"projection {self.name} is being written by another process (advisory "
                f"lock {label!r} in database {db.info.dbname}{whole}); stop it first"
            )

    def _open(self, generation: Generation) -> Connection | None:
        with self._guard:
            idle = self._idle.pop() if self._idle else None
        if idle is not None:
            try:
                return self._probe(idle, generation)
            except psycopg.OperationalError:
                pass  # dropped while idle (the server restarted): open a new one
        db = _connect(self.url, autocommit=False)
        db.read_only = True
        return self._probe(db, generation)

    def _probe(self, db: PostgresConnection, generation: Generation) -> Connection | None:
        """``db`` in a transaction on ``generation``, or None when that is gone."""
        try:
            # One transaction for the whole request: the probe's lock on its table
            # keeps a replay from dropping the generation until the reader is done.
            _use(db, generation.name, local=True)
            db.execute(tables.PROBE).fetchall()
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
            self.close_reader(db)
            return None
        except BaseException:
            db.close()
            raise
        return db

    def close_reader(self, db: Connection, *, reusable: bool = True) -> None:
        assert isinstance(db, PostgresConnection)
        if reusable and not db.closed and not db.broken:
            with contextlib.suppress(psycopg.Error):
                db.rollback()
                with self._guard:
                    if not self._closed and len(self._idle) < _IDLE_READERS:
                        self._idle.append(db)
                        return
        db.close()

    def close(self) -> None:
        with self._guard:
            self._closed = True
            idle, self._idle = self._idle, []
            if self._db is not None:
                idle.append(self._db)
                self._db = None
        for db in idle:
            db.close()
