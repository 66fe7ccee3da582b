"""A projection's read model opened for writing: its tables, its checkpoints, its dead
letters and its cut into slices in one generation (a SQLite file or a PostgreSQL schema,
see :mod:`toolkit.readmodels.interface`), changed in one transaction per batch, so the
model and the position it reflects never disagree.

While a projector catches up, it may ask the store to *hold* batches: each is written in
a savepoint of one transaction left open, committed once it holds
:attr:`ReadModelStore.commit_events` events or is :attr:`ReadModelStore.commit_seconds`
old, or when the projector reaches the head (:meth:`ReadModelStore.flush`). A commit
rewrites every page it touched, and a model keyed by random ids has its changes all over
its index: fewer, larger commits write far less, without the projector holding more
messages in memory. Checkpoint and rows still commit together; a crash loses held batches
and their checkpoint alike (they are read again). A held batch that fails is rolled back
to its savepoint and the batches before it committed, so it fails as it would alone; if
the database rolled the whole transaction back (a full disk, a lost connection), the
store forgets what it held and raises :class:`CommitLost`: the projector reads again from
the checkpoint committed (whoever met the loss: then on its next batch). A connection the
server dropped while idle (a restart) is opened again by the next write or read.

The store stores: it is handed batches already translated (:mod:`toolkit.read.batches`)
and writes them through the SQL of the toolkit's tables (:mod:`toolkit.readmodels.tables`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Literal, TypeVar

from toolkit.errors import (
    BatchFailure,
    ConfigurationError,
    PoisonMessage,
    ProjectionBusyError,
    ProjectionVersionError,
)
from toolkit.read.batches import BatchResult, TranslatedBatch, poison
from toolkit.read.parking import Parking
from toolkit.read.projection import Projection
from toolkit.read.reader import StreamMessage
from toolkit.readmodels import Connection, Generation, backends, tables
from toolkit.readmodels.faults import is_infrastructure_error
from toolkit.wire.subjects import aggregate_token

__all__ = ["BatchResult", "CommitLost", "ReadModelStore"]

T = TypeVar("T")

COMMIT_EVENTS = 250_000
"""Events a held transaction takes at most before it is committed."""
COMMIT_SECONDS = 10.0
"""Seconds a held transaction stays open at most (readers see the model this late while
a projector catches up; at the head each batch is committed at once)."""


class CommitLost(Exception):
    """The database rolled back a transaction holding batches (a full disk, a lost
    connection): the store went back to its last committed checkpoints, and the messages
    since are to be read again from there."""


_MOVED_NAMES = {
    "connect": ("toolkit.readmodels.sqlite", "connect"),
    "DeadLetter": ("toolkit.readmodels.tables", "DeadLetter"),
    "dump": ("toolkit.readmodels.tables", "dump"),
    "read_dead_letters": ("toolkit.readmodels.tables", "dead_letters"),
}
"""Names this module held in 0.1, and their owners now: importable here for one release."""


def __getattr__(name: str) -> object:
    if name not in _MOVED_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    import warnings

    module, attribute = _MOVED_NAMES[name]
    warnings.warn(
        f"{__name__}.{name} is now {module}.{attribute}; the old name goes in the next release",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(module), attribute)


class ReadModelStore:
    """One generation of a projection's read model, opened for writing."""

    def __init__(self, generation: Generation, projection: Projection) -> None:
        self.generation = generation
        self.projection = projection
        self._writing = threading.Lock()  # write() and park() never interleave
        self._failing = True  # until known otherwise: the first success clears the record
        self.db: Connection = backends.connect(generation)
        self.dialect = self.db.dialect
        try:
            self._create(generation, projection)
        except BaseException:
            self.db.close()
            raise
        self._checkpoints: dict[str, int] = dict(tables.checkpoints(self.db))
        # The log position (in Nats-Msg-Id) of the last message passed, per checkpoint: a
        # stream that lost its tail gets the lost events again at new sequences, past
        # the checkpoint; they are known by their log position and not applied twice.
        self._positions: dict[str, int] = tables.positions(self.db)
        self.parking = Parking(self.db)
        """Parked aggregates, and dead letters not yet passed by the checkpoint."""
        self.commit_events = COMMIT_EVENTS
        self.commit_seconds = COMMIT_SECONDS
        self._holding = 0
        """Events written in the open transaction (0: none is open)."""
        self._holding_since = 0.0
        self._stale = False
        """Held batches were lost and the committed state is not read back yet."""
        self._lost_unseen = False
        """Held batches were lost since the last batch: the next one gets CommitLost."""

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
            tables.create(db)
            stored = tables.read_meta(db, "version")
            if stored is not None and int(stored) != projection.version:
                raise ProjectionVersionError(
                    f"the read model {generation.name} of projection {projection.name} is "
                    f"version {stored} but the code is version {projection.version}: rebuild "
                    f"it with 'toolkit replay {projection.name}' (or 'toolkit project "
                    f"{projection.name} --rebuild')"
                )
            projection.create_tables(db)
            tables.introduce(db, projection.name, projection.version)

    def close(self) -> None:
        try:
            with self._writing:
                self._commit_held()
        finally:
            self.db.close()

    def flush(self) -> None:
        """Commit the batches held (see :meth:`write`), if any."""
        if self._holding:
            with self._writing:
                self._commit_held()

    def _commit_held(self) -> None:
        if not self._holding:
            return
        self._holding = 0
        if self._in_transaction():
            try:
                self.db.execute("COMMIT")
                return
            except Exception as exc:
                self._forget_held()
                raise self._lost(exc) from exc
        self._forget_held()
        raise self._lost()

    def _lost(self, cause: BaseException | None = None) -> CommitLost:
        why = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
        return CommitLost(
            f"projection {self.projection.name}: its read model {self.generation.name} "
            f"rolled back the batches held{why}; reading again from the checkpoint"
        )

    def _in_transaction(self) -> bool:
        """Whether the connection is inside a transaction (SQLite or psycopg)."""
        info = getattr(self.db, "info", None)
        if info is not None:  # psycopg: INTRANS (2) or INERROR (3)
            return int(info.transaction_status) in (2, 3)
        return bool(getattr(self.db, "in_transaction", False))

    def _forget_held(self) -> None:
        """Go back to what is committed: the held batches were rolled back."""
        self._holding = 0
        with contextlib.suppress(Exception):
            self.db.execute("ROLLBACK")
        self._stale = self._lost_unseen = True
        with contextlib.suppress(Exception):
            self._reload_if_stale()

    def _reload_if_stale(self) -> None:
        """Read what is committed again after held batches were lost (CommitLost until
        the database says it)."""
        if not self._stale:
            return
        try:
            self._reconnect()
            self._checkpoints = dict(tables.checkpoints(self.db))
            self._positions = tables.positions(self.db)
            self.parking = Parking(self.db)
        except Exception as exc:
            raise self._lost(exc) from exc
        self._stale = False

    def _reconnect(self) -> None:
        """Open the generation again if the database server dropped the connection (it
        restarted); until it answers, that is a batch failure, retried."""
        if not getattr(self.db, "broken", False):
            return
        lost, self._holding = self._holding > 0, 0  # the connection took them with it
        if lost:
            self._stale = self._lost_unseen = True
        with contextlib.suppress(Exception):
            self.db.close()
        try:
            self.db = backends.connect(self.generation)
        except Exception as exc:
            raise BatchFailure(
                f"projection {self.projection.name} cannot reach its read model "
                f"{self.generation.name}: {type(exc).__name__}: {exc}"
            ) from exc
        if lost:
            raise self._lost()

    @contextlib.contextmanager
    def _transaction(
        self, lock: Literal["shared", "exclusive"] | None = None
    ) -> Iterator[Connection]:
        """A writing transaction: committed when the block ends, rolled back if it raises."""
        self.db.execute(self.dialect.begin)
        try:
            locking = lock and self.dialect.generation_lock(shared=lock == "shared")
            if locking:
                self.db.execute(locking)
            yield self.db
            self.db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):  # SQLite rolls back by itself on a full disk
                self.db.execute("ROLLBACK")
            raise

    # -- checkpoints ----------------------------------------------------------------------

    def joined(self, stream: str) -> bool:
        """Whether the projection has a position in ``stream`` yet."""
        return tables.checkpoint_key(stream) in self._checkpoints

    def join(self, stream: str, sequence: int, position: int | None = None) -> None:
        """Record where the projection joins a stream: it goes on from ``sequence + 1``,
        having passed log ``position`` (when known: events the relay carries again
        after a loss, up to it, are not applied)."""
        key = tables.checkpoint_key(stream)
        with self._writing:
            self._commit_held()
            self._reconnect()
            with self._transaction() as db:
                tables.join(db, key, sequence, position)
            self._checkpoints[key] = tables.checkpoint(self.db, key) or 0
            passed = tables.position(self.db, key)
            if passed is not None:
                self._positions[key] = passed

    def checkpoint(self, stream: str) -> int:
        """The last stream sequence applied (0 when none), held batches included."""
        self._reload_if_stale()
        return self._checkpoints.get(tables.checkpoint_key(stream), 0)

    def position(self, stream: str) -> int | None:
        """The log position of the last relayed message passed (None before the first)."""
        return self._positions.get(tables.checkpoint_key(stream))

    def epochs(self, stream: str) -> list[tuple[int, int]]:
        """How ``stream`` is cut: (first sequence, slices) of each cut, oldest first; none
        while one worker keeps the model (see :mod:`toolkit.read.slices`)."""
        return self._read(lambda db: tables.epochs(db, stream))

    def _read(self, read: Callable[[Connection], T]) -> T:
        """``read`` after the held batches commit (or are lost), reconnecting if dropped."""
        with self._writing:
            with contextlib.suppress(CommitLost):
                self._commit_held()
            self._reconnect()
            try:
                return read(self.db)
            except Exception:
                if not getattr(self.db, "broken", False):
                    raise
            self._reconnect()  # dropped while idle: found out only now
            return read(self.db)

    # -- batches --------------------------------------------------------------------------

    def write(self, batch: TranslatedBatch, *, hold: bool = False) -> BatchResult:
        """Write a translated batch and advance the checkpoint, all in one transaction.
        With ``hold`` the transaction may stay open for the next batches (see the
        module); without, it is committed with any held before.

        The projection gets all of the batch's facts in one
        :meth:`~toolkit.read.projection.Projection.apply_batch` call. When that fails,
        the facts are tried one at a time (and rolled back) to name the message at fault.
        """
        stream, checkpoint, result = batch.stream, batch.checkpoint, batch.result
        with self._writing:
            self._reload_if_stale()
            self._reconnect()
            lost, self._lost_unseen = self._lost_unseen, False
            if lost and batch.since != self.checkpoint(stream):
                raise self._lost()
            if batch.since != self.checkpoint(stream):
                raise ValueError(
                    f"a batch of {stream} translated from checkpoint {batch.since} cannot be "
                    f"written at checkpoint {self.checkpoint(stream)}: translate it again"
                )
            if checkpoint == batch.since:
                if not hold:
                    self._commit_held()
                return result
            key = tables.checkpoint_key(stream)
            try:
                with (
                    self._held_transaction() if self._holding or hold else self._transaction() as db
                ):
                    for message, reason in batch.dead:
                        self._dead_letter(message, reason)
                    for token, sequence in batch.parked.items():
                        tables.park(db, stream, token, sequence)
                    if batch.facts:
                        self.projection.apply_batch(batch.facts, db)
                    self._advance(key, checkpoint)
                    if batch.position is not None and batch.position != self._positions.get(key):
                        tables.pass_position(db, key, batch.position)
            except CommitLost:
                self._lost_unseen = False  # the projector is told
                raise
            except ProjectionBusyError:
                self._commit_held()
                raise
            except Exception as exc:
                self._commit_held()  # the batches before it stay applied
                failure, cause = self._blame(batch, exc)
                raise failure from cause
            self._checkpoints[key] = checkpoint
            if batch.position is not None:
                self._positions[key] = batch.position
            self.parking.parked(stream, batch.parked)
            if self._holding:
                self._holding += len(batch.messages)
                if (
                    not hold
                    or self._holding >= self.commit_events
                    or time.monotonic() - self._holding_since >= self.commit_seconds
                ):
                    self._commit_held()
            return result

    @contextlib.contextmanager
    def _held_transaction(self) -> Iterator[Connection]:
        """A savepoint in the transaction holding batches (begun if none is open): released
        when the block ends, rolled back to if it raises (the transaction stays open, or,
        if the database rolled it back, :class:`CommitLost` is raised)."""
        if not self._holding:
            self.db.execute(self.dialect.begin)
            self._holding, self._holding_since = 1, time.monotonic()  # 1: open, none written yet
        self.db.execute("SAVEPOINT toolkit_batch")
        try:
            yield self.db
            self.db.execute("RELEASE SAVEPOINT toolkit_batch")
        except BaseException as exc:
            if self._in_transaction():
                with contextlib.suppress(Exception):
                    self.db.execute("ROLLBACK TO SAVEPOINT toolkit_batch")
                    self.db.execute("RELEASE SAVEPOINT toolkit_batch")
                if self._in_transaction():
                    raise
            self._forget_held()
            raise self._lost(exc) from exc

    def _advance(self, key: str, checkpoint: int) -> None:
        """Move the checkpoint, inside the batch's transaction, from where this store
        last left it: if another writer moved it meanwhile (one that should have been
        kept out by the writer lock), nothing of the batch is written."""
        before = self._checkpoints.get(key)  # None: never joined (a batch applied by hand)
        if not tables.advance(self.db, key, before, checkpoint):
            raise ProjectionBusyError(
                f"projection {self.projection.name} was written by another process: its "
                f"{key} checkpoint is no longer {before}; stop the other one first"
            )

    def _blame(
        self, batch: TranslatedBatch, exc: Exception
    ) -> tuple[BatchFailure | PoisonMessage, Exception]:
        """Why a batch could not be written, and the error behind it: its surroundings (a
        batch failure, retried as it is) or the first message that fails on its own (a
        poison message)."""
        name = self.projection.name
        if getattr(self.db, "broken", False):  # the server went away: no one to blame
            return BatchFailure(
                f"projection {name} lost its read model's connection: {type(exc).__name__}: {exc}"
            ), exc
        if is_infrastructure_error(exc):  # a full disk, an I/O error: no message is to blame
            return BatchFailure(
                f"projection {name} cannot write its read model: {type(exc).__name__}: {exc}"
            ), exc
        at, cause = self._culprit(batch.facts, batch.origins, exc)
        if at is None:
            return BatchFailure(
                f"projection {name} could not apply {batch.stream} sequences "
                f"{batch.messages[0].sequence} to {batch.checkpoint}: "
                f"{type(cause).__name__}: {cause}"
            ), cause
        culprit = next(m for m in batch.messages if m.sequence == at)
        return poison(self.projection, culprit, cause), cause

    def _culprit(
        self, facts: list[object], origins: list[tuple[int, int]], batch_error: Exception
    ) -> tuple[int | None, Exception]:
        """Apply the facts one by one in a transaction that is rolled back, to find the
        first that fails on its own."""
        sequences = [sequence for sequence, count in origins for _ in range(count)]
        self.db.execute(self.dialect.begin)
        try:
            for fact, sequence in zip(facts, sequences, strict=True):
                try:
                    self.projection.apply(fact, self.db)
                except Exception as exc:
                    return sequence, exc
        finally:
            self.db.execute("ROLLBACK")
        return None, batch_error  # no single message fails: the batch as a whole does

    # -- failing messages -----------------------------------------------------------------

    def park(self, message: StreamMessage, reason: str, *, aggregate: bool) -> None:
        """Put a message that keeps failing in the dead letters, and with ``aggregate``
        every later message of its aggregate too; the checkpoint passes over them."""
        token = aggregate_token(message.subject)
        with self._writing:
            self._commit_held()
            self._reconnect()
        with self._writing, self._transaction() as db:
            self._dead_letter(message, reason)
            if aggregate:
                tables.park(db, message.stream, token, message.sequence)
        self.parking.parked_one(message.stream, message.sequence, token if aggregate else None)

    def note_failing(self, reason: str | None) -> None:
        """Record (or clear) why the projection cannot make progress, for ``status``.
        Best effort: when the database itself is the trouble, this may fail too."""
        if reason is None and not self._failing:
            return
        with contextlib.suppress(CommitLost):  # the next batch is told
            self.flush()
        with self._writing, contextlib.suppress(self.db.Error):
            if reason is None:
                tables.forget_meta(self.db, "failing")
            else:
                tables.write_meta(self.db, {"failing": reason})
            self._failing = reason is not None

    def _dead_letter(self, message: StreamMessage, reason: str) -> None:
        tables.add_dead_letter(
            self.db,
            message.stream,
            message.sequence,
            message.subject,
            message.headers,
            message.data,
            reason,
        )

    # -- dead letters (retried by toolkit.read.deadletters) ------------------------------

    def dead_letters(self) -> list[tables.DeadLetter]:
        """Every dead letter, oldest first."""
        return self._read(tables.dead_letters)

    def drop_dead_letter(self, stream: str, sequence: int) -> bool:
        """Give up a dead letter for good. If it held its aggregate parked, the
        aggregate's new messages are applied again (those parked behind it stay dead
        letters, to retry or drop)."""
        return self.settle_dead_letter(stream, sequence)

    def settle_dead_letter(self, stream: str, sequence: int, facts: Sequence[object] = ()) -> bool:
        """Apply a dead letter's ``facts`` (none: drop it) and delete it, in one
        transaction; the aggregate it held parked is released. Returns whether it was
        there; raises, having changed nothing, when the projection fails on them."""
        with self._writing:
            self._commit_held()
            with self._transaction() as db:
                if facts:
                    self.projection.apply_batch(list(facts), db)
                gone = tables.remove_dead_letter(db, stream, sequence)
            self.parking.release(stream, sequence)
        return bool(gone)
