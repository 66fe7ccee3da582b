"""A projection's read model: its tables, its checkpoints, its dead letters and its
partitioning in one generation (a SQLite file or a PostgreSQL schema, see
:mod:`toolkit.readmodels.interface`), changed in one transaction per batch, so the model and the
position it reflects never disagree.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import orjson

from toolkit import wire
from toolkit.errors import (
    BatchFailure,
    ConfigurationError,
    ContractError,
    PoisonMessage,
    ProjectionBusyError,
    ProjectionVersionError,
)
from toolkit.read.projection import Projection
from toolkit.read.reader import StreamMessage
from toolkit.read.translator import Translator, UnknownEvent
from toolkit.readmodels import Connection, Dialect, Generation, Rows, backends
from toolkit.readmodels.sqlite import connect as connect  # the SQLite one, where it always was

_TOOLKIT_TABLES = """
CREATE TABLE IF NOT EXISTS toolkit_checkpoint (
    stream TEXT PRIMARY KEY,
    sequence {integer} NOT NULL
);
CREATE TABLE IF NOT EXISTS toolkit_position (
    stream TEXT PRIMARY KEY,
    position {integer} NOT NULL
);
CREATE TABLE IF NOT EXISTS toolkit_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS toolkit_dead_letter (
    stream TEXT NOT NULL,
    sequence {integer} NOT NULL,
    subject TEXT NOT NULL,
    headers TEXT NOT NULL,
    body {blob} NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (stream, sequence)
);
CREATE TABLE IF NOT EXISTS toolkit_epoch (
    stream TEXT NOT NULL,
    from_sequence {integer} NOT NULL,
    partitions INTEGER NOT NULL,
    PRIMARY KEY (stream, from_sequence)
);
CREATE TABLE IF NOT EXISTS toolkit_parked (
    stream TEXT NOT NULL,
    aggregate TEXT NOT NULL,
    sequence {integer} NOT NULL,
    PRIMARY KEY (stream, aggregate)
)
"""


@dataclass(frozen=True)
class _Flavour:
    """What the store's own SQL needs to know of a dialect."""

    begin: str
    """Starts a writing transaction."""
    locks: dict[str, str]
    """Generation-wide locks a transaction takes after ``begin``: ``shared`` (a partition
    worker's batch) and ``exclusive`` (creating tables, repartitioning), where ``begin``
    alone does not already exclude every other writer."""
    tables: list[str]
    """The toolkit's tables, ready to create."""
    statement: Callable[[str], str]
    """The store's SQL (``?`` placeholders) in the dialect."""
    projection_tables: str
    """Lists the projection's own tables (for :func:`dump`)."""


_GENERATION_LOCK = "hashtext('toolkit.generation'), hashtext(current_schema())"
_FLAVOURS = {
    Dialect.SQLITE: _Flavour(
        begin="BEGIN IMMEDIATE",  # takes the write lock: one writer at a time
        locks={},
        tables=_TOOLKIT_TABLES.format(integer="INTEGER", blob="BLOB").split(";"),
        statement=lambda sql: sql,
        projection_tables="SELECT name FROM sqlite_master WHERE type = 'table' "
        "AND name NOT LIKE 'toolkit_%' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    ),
    Dialect.POSTGRESQL: _Flavour(
        begin="BEGIN",
        locks={
            "shared": f"SELECT pg_advisory_xact_lock_shared({_GENERATION_LOCK})",
            "exclusive": f"SELECT pg_advisory_xact_lock({_GENERATION_LOCK})",
        },
        tables=_TOOLKIT_TABLES.format(integer="BIGINT", blob="BYTEA").split(";"),
        statement=functools.cache(lambda sql: sql.replace("?", "%s")),
        projection_tables="SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' "
        "AND table_name NOT LIKE 'toolkit_%' ORDER BY table_name",
    ),
}


class DeadLetter(NamedTuple):
    stream: str
    sequence: int
    subject: str
    headers: dict[str, str]
    body: bytes
    reason: str


@dataclass
class BatchResult:
    applied: int = 0
    skipped: int = 0
    """Event types the projection does not read (tolerant reader)."""
    duplicates: int = 0
    """Messages at or below the checkpoint: already applied, not applied again."""
    dead_lettered: int = 0
    foreign: int = 0
    """Messages of aggregates another partition owns (partitioned projections)."""
    untrusted: int = 0
    """Messages the stream's relay did not publish (another publisher's, or malformed):
    dead-lettered or skipped as the projection's ``on_untrusted`` says."""
    retry: bool = False
    """The partitioning changed while the batch was being applied: nothing was written."""


class ReadModelStore:
    """One generation of a projection's read model, opened for writing."""

    def __init__(
        self, generation: Generation, projection: Projection, *, partition: int | None = None
    ) -> None:
        self.generation = generation
        self.projection = projection
        self.partition = partition
        """With partitioned workers sharing one read model, this worker's index."""
        self._writing = threading.Lock()  # apply() and park() never interleave
        self._failing = True  # until known otherwise: the first success clears the record
        self.db: Connection = backends.connect(generation)
        self.dialect = self.db.dialect
        self._flavour = _FLAVOURS[self.dialect]
        try:
            self._create(generation, projection)
        except BaseException:
            self.db.close()
            raise
        self._checkpoints: dict[str, int] = dict(
            self.db.execute("SELECT stream, sequence FROM toolkit_checkpoint").fetchall()
        )
        # The log position (in Nats-Msg-Id) of the last message passed, per checkpoint: a
        # stream that lost its tail gets the lost events again at new sequences, past
        # the checkpoint; they are known by their log position and not applied twice.
        self._positions: dict[str, int] = dict(
            self.db.execute("SELECT stream, position FROM toolkit_position").fetchall()
        )
        # Parked aggregates (their later messages are parked too) and the parked
        # messages not yet passed by the checkpoint (skipped when the batch comes again).
        self._parked: dict[str, dict[str, int]] = {}
        for stream, aggregate, sequence in self.db.execute("SELECT * FROM toolkit_parked"):
            self._parked.setdefault(stream, {})[aggregate] = sequence
        self._passed_over: set[tuple[str, int]] = {
            (stream, sequence)
            for stream, sequence in self.db.execute(
                "SELECT d.stream, d.sequence FROM toolkit_dead_letter d "
                "LEFT JOIN toolkit_checkpoint c ON c.stream = d.stream "
                "WHERE d.sequence > coalesce(c.sequence, 0)"
            )
        }

    @property
    def path(self) -> Generation:
        """The generation written (a file's path on SQLite)."""
        return self.generation

    def _create(self, generation: Generation, projection: Projection) -> None:
        """Create the toolkit's and the projection's tables, unless the generation was
        built by another version of the projection."""
        if self.dialect not in projection.dialects:
            raise ConfigurationError(
                f"projection {projection.name} keeps its read model in "
                f"{', '.join(map(str, projection.dialects))}, not {self.dialect}: declare "
                f"dialects = (..., {self.dialect!r}) when its SQL works there"
            )
        with self._transaction("exclusive") as db:
            for statement in self._flavour.tables:
                db.execute(statement)
            row = db.execute("SELECT value FROM toolkit_meta WHERE key = 'version'").fetchone()
            if row is not None and int(row[0]) != projection.version:
                raise ProjectionVersionError(
                    f"the read model {generation.name} of projection {projection.name} is "
                    f"version {row[0]} but the code is version {projection.version}: rebuild "
                    f"it with 'toolkit replay {projection.name}' (or 'toolkit project "
                    f"{projection.name} --rebuild')"
                )
            projection.create_tables(db)
            self._execute(
                "INSERT INTO toolkit_meta VALUES ('projection', ?), ('version', ?) "
                "ON CONFLICT DO NOTHING",
                (projection.name, str(projection.version)),
            )

    def close(self) -> None:
        self.db.close()

    def _reconnect(self) -> None:
        """Open the generation again if the database server dropped the connection (it
        restarted); until it answers, that is a batch failure, retried."""
        if not getattr(self.db, "broken", False):
            return
        with contextlib.suppress(Exception):
            self.db.close()
        try:
            self.db = backends.connect(self.generation)
        except Exception as exc:
            raise BatchFailure(
                f"projection {self.projection.name} cannot reach its read model "
                f"{self.generation.name}: {type(exc).__name__}: {exc}"
            ) from exc

    def _execute(self, sql: str, parameters: Sequence[Any] = ()) -> Rows:
        """Run the store's own SQL (written with ``?`` placeholders)."""
        return self.db.execute(self._flavour.statement(sql), parameters)

    @contextlib.contextmanager
    def _transaction(
        self, lock: Literal["shared", "exclusive"] | None = None
    ) -> Iterator[Connection]:
        """A writing transaction: committed when the block ends, rolled back if it raises."""
        self.db.execute(self._flavour.begin)
        try:
            if lock in self._flavour.locks:
                self.db.execute(self._flavour.locks[lock])
            yield self.db
            self.db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):  # SQLite rolls back by itself on a full disk
                self.db.execute("ROLLBACK")
            raise

    def _key(self, stream: str, partition: int | None = None) -> str:
        """Where a checkpoint is kept: the stream's name, with ``#<index>`` for a
        partition (stream names cannot hold ``#``)."""
        index = self.partition if partition is None else partition
        return stream if index is None else f"{stream}#{index}"

    def joined(self, stream: str) -> bool:
        """Whether the projection has a position in ``stream`` yet."""
        return self._key(stream) in self._checkpoints

    def join(self, stream: str, sequence: int, position: int | None = None) -> None:
        """Record where the projection joins a stream: it goes on from ``sequence + 1``,
        having passed log ``position`` (when known: events the relay carries again
        after a loss, up to it, are not applied)."""
        key = self._key(stream)
        with self._writing:
            self._reconnect()
            with self._transaction():
                self._execute(
                    "INSERT INTO toolkit_checkpoint VALUES (?, ?) ON CONFLICT DO NOTHING",
                    (key, sequence),
                )
                if position is not None:
                    self._execute(
                        "INSERT INTO toolkit_position VALUES (?, ?) ON CONFLICT DO NOTHING",
                        (key, position),
                    )
            (self._checkpoints[key],) = self._execute(
                "SELECT sequence FROM toolkit_checkpoint WHERE stream = ?", (key,)
            ).fetchone()
            row = self._execute(
                "SELECT position FROM toolkit_position WHERE stream = ?", (key,)
            ).fetchone()
            if row is not None:  # (a handover from one worker may have set it)
                self._positions[key] = int(row[0])

    def checkpoint(self, stream: str) -> int:
        """The last stream sequence applied (0 when none)."""
        return self._checkpoints.get(self._key(stream), 0)

    def partition_checkpoint(self, stream: str, partition: int) -> int | None:
        """Another partition's checkpoint, as it is in the database now."""
        self._reconnect()
        row = self._execute(
            "SELECT sequence FROM toolkit_checkpoint WHERE stream = ?",
            (self._key(stream, partition),),
        ).fetchone()
        return None if row is None else int(row[0])

    def epochs(self, stream: str) -> list[tuple[int, int]]:
        """(first sequence, partitions) of each partitioning of ``stream``, oldest first."""
        self._reconnect()
        return self._epochs(stream)

    def _epochs(self, stream: str) -> list[tuple[int, int]]:
        return [
            (int(start), int(count))
            for start, count in self._execute(
                "SELECT from_sequence, partitions FROM toolkit_epoch WHERE stream = ? "
                "ORDER BY from_sequence",
                (stream,),
            )
        ]

    def repartition(self, stream: str, partitions: int, head: int) -> list[tuple[int, int]]:
        """Make ``partitions`` the partitioning of ``stream`` from ``head + 1`` on, unless
        it already is; the workers of the previous partitioning finish everything up to
        ``head`` first (see :class:`~toolkit.read.projector.Projector`).

        The first partitioning of a model that one worker kept so far starts right after
        that worker's checkpoint, which it hands over: partition workers and a worker of
        the whole never run together (the home's writer lock), so nothing is applied
        twice or skipped."""
        with self._writing:
            self._reconnect()
        with self._writing, self._transaction("exclusive"):
            epochs = self._epochs(stream)
            if not epochs or epochs[-1][1] != partitions:
                if epochs:
                    start = max(head + 1, epochs[-1][0] + 1)
                else:
                    row = self._execute(
                        "SELECT sequence FROM toolkit_checkpoint WHERE stream = ?", (stream,)
                    ).fetchone()
                    start = 1 if row is None else int(row[0]) + 1
                self._execute(
                    "INSERT INTO toolkit_epoch VALUES (?, ?, ?)", (stream, start, partitions)
                )
                # A partition that has no log position yet starts from the highest one
                # a worker had reached by the new partitioning's start (none is past it
                # yet, or its checkpoint says so): events the relay carries again after
                # a loss, up to it, were applied, whoever owned them.
                for index in range(partitions):
                    self._execute(
                        "INSERT INTO toolkit_position SELECT ?, max(p.position) "
                        "FROM toolkit_position p JOIN toolkit_checkpoint c ON c.stream = "
                        "p.stream WHERE (p.stream = ? OR substr(p.stream, 1, length(?) + 1) "
                        "= ? || '#') AND c.sequence <= ? HAVING max(p.position) IS NOT NULL "
                        "ON CONFLICT DO NOTHING",
                        (self._key(stream, index), stream, stream, stream, start - 1),
                    )
                if len(epochs) == 0:  # the one worker's place is handed over
                    for table in ("toolkit_checkpoint", "toolkit_position"):
                        self._execute(f"DELETE FROM {table} WHERE stream = ?", (stream,))
        return self._epochs(stream)

    def apply(
        self,
        translator: Translator,
        messages: Sequence[StreamMessage],
        *,
        owns: Callable[[StreamMessage], bool] | None = None,
        epochs: int | None = None,
    ) -> BatchResult:
        """Apply a batch (see :meth:`_apply`). A partitioned worker passes ``owns`` (is a
        message's aggregate its own?) and how many partitionings it decided that with;
        if another was recorded meanwhile, nothing is written and ``retry`` is set."""
        with self._writing:
            self._reconnect()
            return self._apply(translator, messages, owns, epochs)

    def _apply(
        self,
        translator: Translator,
        messages: Sequence[StreamMessage],
        owns: Callable[[StreamMessage], bool] | None = None,
        epochs: int | None = None,
    ) -> BatchResult:
        """Apply a batch and advance the checkpoint, all in one transaction.

        Messages are translated first; the projection then gets all of the batch's facts
        in one :meth:`~toolkit.read.projection.Projection.apply_batch` call. When that fails,
        the facts are tried one at a time (and rolled back) to name the message at fault.
        """
        result = BatchResult()
        stream = translator.stream
        checkpoint = self.checkpoint(stream)
        facts: list[object] = []
        origins: list[tuple[int, int]] = []  # (stream sequence, facts it gave) a message
        dead: list[tuple[StreamMessage, str]] = []
        parked = self._parked.get(stream, {})
        newly_parked: dict[str, int] = {}  # aggregate -> the sequence of this batch parking it
        park_aggregates = self.projection.on_poison == "park-aggregate"
        keep_untrusted = self.projection.on_untrusted == "dead-letter"
        passed_over = self._passed_over
        key = self._key(stream)
        last_position = self._positions.get(key)
        msg_id = wire.MSG_ID
        relayed_head = wire.relayed_head
        for message in messages:
            sequence = message.sequence
            if sequence <= checkpoint:
                result.duplicates += 1
                continue
            checkpoint = sequence
            head = relayed_head(stream, message.headers.get(msg_id), message.data)
            if isinstance(head, str):  # not the relay's: it moves nothing, parks nothing
                if owns is not None and not owns(message):
                    result.foreign += 1
                    continue
                result.untrusted += 1
                if keep_untrusted:
                    dead.append((message, f"not published by the {stream} relay: {head}"))
                    result.dead_lettered += 1
                continue
            position = head.logposition
            assert position is not None  # relayed_head checked it
            if last_position is not None and position <= last_position:
                result.duplicates += 1  # published again after the stream lost it
                continue
            last_position = position
            if owns is not None and not owns(message):
                result.foreign += 1
                continue
            if passed_over and (stream, sequence) in passed_over:
                result.dead_lettered += 1  # parked earlier: already in the dead letters
                continue
            token = None
            if parked or newly_parked:
                token = aggregate_token(message.subject)
                behind = parked.get(token, newly_parked.get(token))
                if behind is not None and sequence > behind:  # never the ones before it
                    dead.append((message, f"parked behind {stream} sequence {behind}"))
                    result.dead_lettered += 1
                    continue
            try:
                translated = translator.translate(message, head)
            except UnknownEvent:
                result.skipped += 1
            except ContractError as exc:
                # A version this consumer cannot read yet, or a broken contract: the
                # aggregate's later messages wait behind it, as for a failing handler.
                dead.append((message, str(exc)))
                result.dead_lettered += 1
                if park_aggregates:
                    newly_parked.setdefault(token or aggregate_token(message.subject), sequence)
            except Exception as exc:
                raise self._poison(message, exc) from exc
            else:
                facts += translated
                origins.append((sequence, len(translated)))
                result.applied += 1
        if checkpoint == self.checkpoint(stream):
            return result
        try:
            with self._transaction(None if epochs is None else "shared") as db:
                if epochs is not None and len(self._epochs(stream)) != epochs:
                    raise _Repartitioned  # since ownership was decided
                for message, reason in dead:
                    self._dead_letter(message, reason)
                for token, sequence in newly_parked.items():
                    self._execute(
                        "INSERT INTO toolkit_parked VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                        (stream, token, sequence),
                    )
                if facts:
                    self.projection.apply_batch(facts, db)
                self._advance(stream, checkpoint)
                if last_position is not None and last_position != self._positions.get(key):
                    self._execute(
                        "INSERT INTO toolkit_position VALUES (?, ?) "
                        "ON CONFLICT (stream) DO UPDATE SET position = excluded.position",
                        (key, last_position),
                    )
        except _Repartitioned:
            return BatchResult(retry=True)
        except ProjectionBusyError:
            raise
        except Exception as exc:
            if getattr(self.db, "broken", False):  # the server went away: no one to blame
                raise BatchFailure(
                    f"projection {self.projection.name} lost its read model's connection: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            if _surroundings(exc):  # a full disk, an I/O error: no message is to blame
                raise BatchFailure(
                    f"projection {self.projection.name} cannot write its read model: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            at, cause = self._culprit(facts, origins, exc)
            if at is None:
                raise BatchFailure(
                    f"projection {self.projection.name} could not apply {stream} "
                    f"sequences {messages[0].sequence} to {checkpoint}: "
                    f"{type(cause).__name__}: {cause}"
                ) from cause
            culprit = next(m for m in messages if m.sequence == at)
            raise self._poison(culprit, cause) from cause
        self._checkpoints[key] = checkpoint
        if last_position is not None:
            self._positions[key] = last_position
        if newly_parked:
            self._parked[stream] = {**newly_parked, **parked}
        return result

    def _advance(self, stream: str, checkpoint: int) -> None:
        """Move the checkpoint, inside the batch's transaction, from where this store
        last left it: if another writer moved it meanwhile (one that should have been
        kept out by the writer lock), nothing of the batch is written."""
        key = self._key(stream)
        before = self._checkpoints.get(key)
        if before is None:  # never joined (a batch applied by hand)
            self._execute(
                "INSERT INTO toolkit_checkpoint VALUES (?, ?) "
                "ON CONFLICT (stream) DO UPDATE SET sequence = excluded.sequence",
                (key, checkpoint),
            )
            return
        moved = self._execute(
            "UPDATE toolkit_checkpoint SET sequence = ? WHERE stream = ? AND sequence = ?",
            (checkpoint, key, before),
        ).rowcount
        if moved != 1:
            raise ProjectionBusyError(
                f"projection {self.projection.name} was written by another process: its "
                f"{key} checkpoint is no longer {before}; stop the other one first"
            )

    def _culprit(
        self, facts: list[object], origins: list[tuple[int, int]], batch_error: Exception
    ) -> tuple[int | None, Exception]:
        """Apply the facts one by one in a transaction that is rolled back, to find the
        first that fails on its own."""
        sequences = [sequence for sequence, count in origins for _ in range(count)]
        self.db.execute(self._flavour.begin)
        try:
            for fact, sequence in zip(facts, sequences, strict=True):
                try:
                    self.projection.apply(fact, self.db)
                except Exception as exc:
                    return sequence, exc
        finally:
            self.db.execute("ROLLBACK")
        return None, batch_error  # no single message fails: the batch as a whole does

    def _poison(self, message: StreamMessage, exc: Exception) -> PoisonMessage:
        return PoisonMessage(
            f"projection {self.projection.name} failed on {message.stream} at sequence "
            f"{message.sequence}: {type(exc).__name__}: {exc}",
            stream=message.stream,
            sequence=message.sequence,
            cause=exc,
        )

    def park(self, message: StreamMessage, reason: str, *, aggregate: bool) -> None:
        """Put a message that keeps failing in the dead letters, and with ``aggregate``
        every later message of its aggregate too; the checkpoint passes over them."""
        token = aggregate_token(message.subject)
        with self._writing:
            self._reconnect()
        with self._writing, self._transaction():
            self._dead_letter(message, reason)
            if aggregate:
                self._execute(
                    "INSERT INTO toolkit_parked VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                    (message.stream, token, message.sequence),
                )
        self._passed_over.add((message.stream, message.sequence))
        if aggregate:
            self._parked.setdefault(message.stream, {}).setdefault(token, message.sequence)

    def note_failing(self, reason: str | None) -> None:
        """Record (or clear) why the projection cannot make progress, for ``status``.
        Best effort: when the database itself is the trouble, this may fail too."""
        if reason is None and not self._failing:
            return
        with self._writing, contextlib.suppress(self.db.Error):
            if reason is None:
                self._execute("DELETE FROM toolkit_meta WHERE key = 'failing'")
            else:
                self._execute(
                    "INSERT INTO toolkit_meta VALUES ('failing', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (reason,),
                )
            self._failing = reason is not None

    # -- dead letters ---------------------------------------------------------------------

    def dead_letters(self) -> list[DeadLetter]:
        """Every dead letter, oldest first."""
        return read_dead_letters(self.db)

    def drop_dead_letter(self, stream: str, sequence: int) -> bool:
        """Give up a dead letter for good. If it held its aggregate parked, the
        aggregate's new messages are applied again (those parked behind it stay dead
        letters, to retry or drop)."""
        with self._writing:
            with self._transaction():
                gone = self._forget_dead_letter(stream, sequence)
            self._forget_parked(stream, sequence)
        return bool(gone)

    def retry_dead_letters(
        self, translators: Sequence[Translator], only: set[tuple[str, int]] | None = None
    ) -> tuple[int, list[DeadLetter]]:
        """Apply dead letters again, oldest first, with the code as it is now; each one
        that succeeds leaves the dead letters (and unparks its aggregate when it was what
        held it). Returns how many succeeded and the ones that failed again."""
        by_stream = {t.stream: t for t in translators}
        done, failed = 0, []
        for letter in self.dead_letters():
            if only is not None and (letter.stream, letter.sequence) not in only:
                continue
            translator = by_stream.get(letter.stream)
            if translator is None:
                failed.append(letter._replace(reason=f"{letter.stream} is not read any more"))
                continue
            root = self._parked.get(letter.stream, {}).get(aggregate_token(letter.subject))
            if root is not None and root != letter.sequence:
                # Its aggregate's order: not before the message that holds it parked.
                failed.append(letter._replace(reason=f"still parked behind sequence {root}"))
                continue
            message = StreamMessage(
                letter.stream, letter.sequence, letter.subject, letter.headers, letter.body
            )
            with self._writing:
                try:
                    with self._transaction() as db:
                        head = wire.relayed_head(
                            letter.stream, letter.headers.get(wire.MSG_ID), letter.body
                        )
                        if isinstance(head, str):
                            raise ContractError(
                                f"not published by the {letter.stream} relay: {head} "
                                "(drop it: it is never applied)"
                            )
                        try:
                            facts = translator.translate(message, head)
                        except UnknownEvent:
                            facts = []
                        if facts:
                            self.projection.apply_batch(facts, db)
                        self._forget_dead_letter(letter.stream, letter.sequence)
                except Exception as exc:
                    failed.append(letter._replace(reason=f"{type(exc).__name__}: {exc}"))
                    continue
                self._forget_parked(letter.stream, letter.sequence)
                done += 1
        return done, failed

    def _forget_dead_letter(self, stream: str, sequence: int) -> int:
        """Delete a dead letter, and the parking of its aggregate it held (inside a
        transaction); returns how many dead letters went."""
        gone = self._execute(
            "DELETE FROM toolkit_dead_letter WHERE stream = ? AND sequence = ?",
            (stream, sequence),
        ).rowcount
        self._execute(
            "DELETE FROM toolkit_parked WHERE stream = ? AND sequence = ?", (stream, sequence)
        )
        return gone

    def _forget_parked(self, stream: str, sequence: int) -> None:
        parked = self._parked.get(stream, {})
        for aggregate, root in list(parked.items()):
            if root == sequence:
                del parked[aggregate]
        self._passed_over.discard((stream, sequence))

    def _dead_letter(self, message: StreamMessage, reason: str) -> None:
        self._execute(
            "INSERT INTO toolkit_dead_letter VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (stream, sequence) DO UPDATE SET subject = excluded.subject, "
            "headers = excluded.headers, body = excluded.body, reason = excluded.reason",
            (
                message.stream,
                message.sequence,
                message.subject,
                orjson.dumps(message.headers).decode(),
                message.data,
                reason,
            ),
        )


class _Repartitioned(Exception):
    """Another partitioning was recorded while a batch was being applied."""


def read_dead_letters(db: Connection) -> list[DeadLetter]:
    """Every dead letter of a read model, oldest first (any connection, read-only too)."""
    rows = db.execute(
        "SELECT stream, sequence, subject, headers, body, reason FROM toolkit_dead_letter "
        "ORDER BY stream, sequence"
    ).fetchall()
    return [DeadLetter(s, q, subj, orjson.loads(h), bytes(b), r) for s, q, subj, h, b, r in rows]


_SQLITE_SURROUNDINGS = {5, 6, 7, 8, 10, 13, 14, 15}
"""BUSY, LOCKED, NOMEM, READONLY, IOERR, FULL, CANTOPEN, PROTOCOL: the database's
surroundings, not the data written."""
_POSTGRES_SURROUNDINGS = ("08", "53", "57", "58")
"""Connection, insufficient resources (disk full), operator intervention, system error."""


def _surroundings(exc: BaseException) -> bool:
    """Whether a database error comes from where the read model lives rather than from
    what a message asked to write: then the batch waits and is tried again."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _SQLITE_SURROUNDINGS
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate[:2] in _POSTGRES_SURROUNDINGS


def aggregate_token(subject: str) -> str:
    """The aggregate id token of ``<context>.<aggregate-type>.<id>.<event>``."""
    parts = subject.split(".", 3)
    return parts[2] if len(parts) > 2 else subject


def dump(db: Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the projection's own tables, sorted: equal dumps mean equal models."""
    flavour = _FLAVOURS[getattr(db, "dialect", Dialect.SQLITE)]
    tables = [row[0] for row in db.execute(flavour.projection_tables)]
    return {t: sorted(tuple(r) for r in db.execute(f'SELECT * FROM "{t}"')) for t in tables}
