"""A bounded context: an ``eventsourcing`` Application whose log is a SQLite file by
default, whose name names its stream, and whose published language says what leaves it.

Persistence is eventsourcing's own: set ``PERSISTENCE_MODULE`` (and its variables, e.g.
``POSTGRES_DBNAME``) to use PostgreSQL, or ``toolkit.logs.jetstream`` (with ``NATS_URL``)
for a JetStream stream ``<name>_log``; otherwise the log is ``<data_dir>/<name>.sqlite``.
Events are stored with :class:`~toolkit.write.transcoder.OrjsonTranscoder` unless
``TRANSCODER_TOPIC`` names another; its format is eventsourcing's own.

Aggregate ids are UUIDs unless the context says otherwise in its type:
``BoundedContext[UUID | str]`` saves aggregates with UUIDs and with text ids
(:class:`~toolkit.write.aggregate.TextAggregate`), and makes its log store text ids
(eventsourcing's ``ORIGINATOR_ID_TYPE=text``). Every save checks its ids before anything
is stored, whichever the log (see :func:`check_id`).
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, cast, get_args, get_origin
from uuid import UUID

from eventsourcing.application import Application, ProcessingEvent, Repository
from eventsourcing.persistence import (
    IntegrityError,
    InternalError,
    Mapper,
    OperationalError,
    ProcessRecorder,
    ProgrammingError,
    Recording,
    Tracking,
)
from eventsourcing.utils import Environment, EnvType
from typing_extensions import TypeVar

from toolkit import tracing
from toolkit.errors import ConfigurationError, ConflictError, InvalidCommand, SubjectError
from toolkit.wire import check_name, encode_token
from toolkit.write.causation import CausalMapper, Causation, Causes, spanned
from toolkit.write.group_commit import GroupCommit
from toolkit.write.published import PublishedLanguage

_CREATE_TRIES = 10
"""Tries at creating a log's tables while other processes (or threads) create them too."""
_MADE_MEANWHILE = {"42P07", "42710", "42723"}
"""PostgreSQL's duplicate table, object and function: ``CREATE ... IF NOT EXISTS`` racing
another process's (both saw none, one created it first)."""


def _made_meanwhile(exc: Exception, *, postgres: bool) -> bool:
    """Whether ``exc``, creating a log's tables, says another process created them."""
    if isinstance(exc, IntegrityError) and "__migration__" in str(exc):
        return True  # (the tracking table's migration record: see construct_recorder)
    if isinstance(exc, ProgrammingError):
        return postgres and getattr(exc.__cause__, "sqlstate", None) in _MADE_MEANWHILE
    if isinstance(exc, (OperationalError, sqlite3.OperationalError)):
        # (a SQLite file whose tables another opener is creating, on a machine too busy for
        # SQLite's busy timeout: "database is locked")
        return not postgres and "locked" in str(exc)
    return postgres


GROUP_COMMIT = "TOOLKIT_GROUP_COMMIT"
"""``on`` (the default on a SQLite or PostgreSQL log): concurrent saves share a transaction
of the log (:mod:`toolkit.write.group_commit`); ``off``: each save has its own."""
_GROUPED_LOGS = ("eventsourcing.sqlite", "eventsourcing.postgres")


def _group_commit(env: Mapping[str, str], log: str) -> bool:
    """Whether the context's saves are grouped (see :data:`GROUP_COMMIT`): by default on
    the logs that can (a JetStream log writes each save as one atomic batch already)."""
    given = env.get(GROUP_COMMIT)
    value = (given or "on").strip().lower()
    if value not in ("on", "off"):
        raise ConfigurationError(f"{GROUP_COMMIT} must be on or off, not {value!r}")
    if value == "on" and log not in _GROUPED_LOGS:
        if given:
            raise ConfigurationError(
                f"{GROUP_COMMIT}=on needs a SQLite or PostgreSQL log, not {log}"
            )
        return False
    return value == "on"


_FENCED_PROCESS_RECORDERS = {
    "eventsourcing.sqlite": "toolkit.logs.sqlite:FencedSQLiteProcessRecorder",
    "eventsourcing.postgres": "toolkit.logs.postgres:FencedPostgresProcessRecorder",
}
"""The process recorder of a context that reacts, by log, unless PROCESS_RECORDER_TOPIC
names another: eventsourcing's, honouring fenced tracking records (:mod:`toolkit.logs.fence`).
The JetStream log's own process recorder honours them."""

ID = TypeVar("ID", bound=UUID | str, default=UUID)
"""The ids of a context's aggregates: UUIDs unless it says ``BoundedContext[UUID | str]``."""


class BoundedContext(Application[ID]):
    """Base for a context's write side. Subclasses set ``name`` and, when they publish,
    ``published_language`` (without one a context publishes nothing: its events stay
    private); one that saves aggregates with text ids says so in its type argument,
    ``BoundedContext[UUID | str]`` (or ``[str]``)."""

    name = "context"
    published_language: ClassVar[PublishedLanguage]
    text_ids: ClassVar[bool] = False
    """Whether the context's type argument admits text ids: its log is then made to store
    them (``ORIGINATOR_ID_TYPE=text``)."""
    reacts: ClassVar[bool] = False
    """Whether policies run on this context (:mod:`toolkit.react`): its log is then
    eventsourcing's process recorder, which stores a tracking record of the foreign
    message a save reacted to in the same transaction as the save's events (on SQLite and
    PostgreSQL toolkit's subclass of it, which also stores fenced tracking records:
    :mod:`toolkit.logs.fence`)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "published_language" not in cls.__dict__:
            inherited = getattr(cls, "published_language", None)
            if inherited is None or (not inherited.topics and inherited.context != cls.name):
                with contextlib.suppress(SubjectError):  # (a bad name is refused at __init__)
                    cls.published_language = PublishedLanguage(cls.name)  # publishes nothing
        for base in cls.__dict__.get("__orig_bases__", ()):
            if get_origin(base) is BoundedContext:
                (ids,) = get_args(base)
                cls.text_ids = str in (get_args(ids) or (ids,))

    def __init__(self, env: EnvType | None = None, *, data_dir: Path | str | None = None) -> None:
        check_name("context", self.name)
        self.data_dir = Path(data_dir or os.environ.get("TOOLKIT_DATA_DIR") or ".toolkit")
        self._saved_listeners: list[Callable[[list[Recording[Any]]], None]] = []
        self._listeners_lock = threading.Lock()
        self._recorded = threading.local()
        self._processing = threading.local()
        self.group_commit: GroupCommit | None = None
        """The log's group commit, when on (see :data:`GROUP_COMMIT`)."""
        super().__init__(env)

    def construct_recorder(self) -> Any:
        """eventsourcing's application recorder, or its process recorder (events and
        tracking records in one transaction) for a context that :attr:`reacts`.

        The recorder creates its log's tables as it starts. On PostgreSQL that is ``CREATE
        ... IF NOT EXISTS`` and ``CREATE OR REPLACE FUNCTION``, which fail when processes of
        one log start at the same moment, as standby relays do (``tuple concurrently
        updated``; on a new schema a duplicate key in ``pg_type``, or ``relation ...
        already exists``). On SQLite and PostgreSQL alike, a process recorder that finds
        no tracking table inserts eventsourcing's ``__migration__`` tracking record, and
        of two processes creating it the second fails. What failed was made by the other
        process meanwhile, so the creation is done again, a few times."""
        postgres = type(self.factory).__module__ == "eventsourcing.postgres"
        for attempt in range(1, _CREATE_TRIES):
            try:
                return self._construct_recorder()
            except (
                InternalError,
                IntegrityError,
                ProgrammingError,
                OperationalError,
                sqlite3.OperationalError,
            ) as exc:
                if not _made_meanwhile(exc, postgres=postgres):
                    raise
                time.sleep(random.uniform(0.01, 0.05) * attempt)  # apart from the others
        return self._construct_recorder()  # the last try: its error is the one raised

    def _construct_recorder(self) -> Any:
        recorder = self.factory.process_recorder() if self.reacts else super().construct_recorder()
        if _group_commit(self.env, type(self.factory).__module__):
            # (an attribute of the instance: the recorder keeps its class for isinstance)
            self.group_commit = GroupCommit(recorder.insert_events)
            recorder.insert_events = self.group_commit  # type: ignore[method-assign]
        return recorder

    def construct_mapper(self) -> Mapper[ID]:
        """eventsourcing's mapper, keeping what caused each event a reaction stores
        (:mod:`toolkit.write.causation`), unless ``MAPPER_TOPIC`` names another."""
        if self.env.get(self.factory.MAPPER_TOPIC):
            return super().construct_mapper()
        return self.factory.mapper(
            transcoder=self.construct_transcoder(), mapper_class=CausalMapper
        )

    def construct_repository(self) -> Repository[ID]:
        """eventsourcing's repository, configured as eventsourcing does, that also finds
        the aggregates saved earlier in the message being processed (:meth:`processing`):
        a reaction may create an aggregate, then run a command on it."""
        repository = super().construct_repository()
        repository.__class__ = _ProcessingRepository  # eventsourcing's, plus a look first
        cast(_ProcessingRepository, repository).processing = self._processing
        return repository

    def construct_env(self, name: str, env: EnvType | None = None) -> Environment:
        environment = super().construct_env(name, env)
        if self.text_ids:
            id_type = environment.get("ORIGINATOR_ID_TYPE") or "text"
            if id_type.lower() != "text":
                raise ConfigurationError(
                    f"context {self.name} saves aggregates with text ids, but its "
                    f"ORIGINATOR_ID_TYPE is {id_type!r}: its log could not store them. Leave "
                    "it unset (or 'text'); a PostgreSQL log created for UUIDs needs its "
                    "originator_id column turned into text first (see the README)"
                )
            environment["ORIGINATOR_ID_TYPE"] = "text"
            postgres = environment.get("PERSISTENCE_MODULE") == "eventsourcing.postgres"
            if postgres and not environment.get("APPLICATION_RECORDER_TOPIC"):
                environment["APPLICATION_RECORDER_TOPIC"] = (
                    "toolkit.logs.postgres:TextIdPostgresRecorder"  # UUIDs too, as text
                )
            if postgres and not environment.get("PROCESS_RECORDER_TOPIC"):
                environment["PROCESS_RECORDER_TOPIC"] = (
                    "toolkit.logs.postgres:TextIdPostgresProcessRecorder"
                )
        if not environment.get("TRANSCODER_TOPIC"):
            environment["TRANSCODER_TOPIC"] = "toolkit.write.transcoder:OrjsonTranscoder"
        if not environment.get("PERSISTENCE_MODULE"):
            self.data_dir.mkdir(parents=True, exist_ok=True)
            environment["PERSISTENCE_MODULE"] = "eventsourcing.sqlite"
            if not environment.get("SQLITE_DBNAME"):
                environment["SQLITE_DBNAME"] = str(self.data_dir / f"{self.name}.sqlite")
        fenced = _FENCED_PROCESS_RECORDERS.get(environment.get("PERSISTENCE_MODULE") or "")
        if fenced and not environment.get("PROCESS_RECORDER_TOPIC"):
            environment["PROCESS_RECORDER_TOPIC"] = fenced  # (the text-id one is fenced too)
        return environment

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[ID]]:
        """Save like eventsourcing does; a concurrent change of the same aggregate raises
        :class:`~toolkit.errors.ConflictError`, an id no log could keep alike or no
        subject could carry :class:`~toolkit.errors.InvalidCommand`, and either stores
        nothing of this save.

        Inside :meth:`processing` (on this thread) nothing is stored yet: the events are
        collected, to be recorded when the block ends, and ``[]`` is returned."""
        collecting: ProcessingEvent[ID] | None = getattr(self._processing, "event", None)
        if collecting is not None:
            before = len(collecting.events)
            collecting.collect_events(*objs, **kwargs)
            for domain_event in collecting.events[before:]:
                if type(domain_event.originator_id) is not UUID:
                    check_id(domain_event.originator_id)
            return []
        try:
            if tracing.enabled():
                with self._saving(None):
                    return super().save(*objs, **kwargs)
            return super().save(*objs, **kwargs)
        except IntegrityError:
            raise _conflict() from None

    @contextlib.contextmanager
    def _saving(self, caused_by: Causes) -> Iterator[None]:
        """The cause of what is stored inside (``caused_by``, or the one around); with
        spans on, a traced save is a span of its own, which its events name as parent."""
        mapper = self.mapper
        if not isinstance(mapper, CausalMapper):
            yield
            return
        cause = mapper.current() if caused_by is None else caused_by
        if isinstance(cause, Causation) and cause.traceparent and tracing.enabled():
            with spanned(cause, f"{self.name} save") as saving, mapper.causing(saving):
                yield
            return
        if caused_by is None:
            yield
            return
        with mapper.causing(caused_by):
            yield

    @contextlib.contextmanager
    def processing(
        self, tracking: Tracking | None, *, caused_by: Causes = None
    ) -> Iterator[ProcessingEvent[ID]]:
        """Inside, this thread's saves are collected into one processing event; when the
        block ends they are recorded with ``tracking`` in one transaction of the log
        (eventsourcing's process recorder), then listeners are told as after a save.
        If the block raises, nothing is recorded: neither the events nor the tracking.

        A tracking record that does not move its position forward (another process
        recorded it first) raises :class:`~toolkit.errors.ConflictError`, as does a
        concurrent change of a saved aggregate; nothing is stored then either.

        ``caused_by`` names what caused the events (a policy's foreign message: see
        :mod:`toolkit.write.causation`), stored and published with them.

        Without ``tracking`` (None) the saves are only recorded in one transaction, on
        any log, a context that does not react included: a queued command's events and
        its outcome (:mod:`toolkit.commands`)."""
        if tracking is not None and not isinstance(self.recorder, ProcessRecorder):
            raise ConfigurationError(
                f"context {self.name} keeps no tracking records: set reacts = True on "
                f"{type(self).__name__} to run policies on it"
            )
        db_functions = getattr(getattr(self.recorder, "datastore", None), "enable_db_functions", 0)
        if tracking is not None and db_functions:
            raise ConfigurationError(  # eventsourcing's insert function drops the tracking
                f"context {self.name} runs policies: its PostgreSQL log must not set "
                "POSTGRES_ENABLE_DB_FUNCTIONS (its insert function stores no tracking record)"
            )
        if getattr(self._processing, "event", None) is not None:
            raise RuntimeError("already processing a message on this thread")
        processing_event: ProcessingEvent[ID] = ProcessingEvent(tracking)
        self._processing.event = processing_event
        try:
            yield processing_event
        finally:
            self._processing.event = None
        with self._saving(caused_by):  # stored with the events, and known to listeners
            try:
                recordings = self._record(processing_event)
            except IntegrityError:
                raise _conflict() from None
            self._notify(recordings)
        self._take_snapshots(processing_event)

    def _record(self, processing_event: ProcessingEvent[ID]) -> list[Recording[ID]]:
        """Every save passes here before its events go to the log, whichever the log."""
        for domain_event in processing_event.events:
            originator_id = domain_event.originator_id
            if type(originator_id) is not UUID:
                check_id(originator_id)
        return super()._record(processing_event)

    def on_saved(self, listener: Callable[[list[Recording[Any]]], None]) -> Callable[[], None]:
        """Call ``listener(recordings)`` after each save has committed (from the saving
        thread, in the order listeners were added); returns a function that removes it.
        The in-process relay wakes this way, and its outbox takes the saved events."""
        with self._listeners_lock:
            self._saved_listeners.append(listener)

        def remove() -> None:
            with self._listeners_lock, contextlib.suppress(ValueError):
                self._saved_listeners.remove(listener)

        return remove

    @contextlib.contextmanager
    def recordings(self) -> Iterator[list[Recording[Any]]]:
        """Collect what this thread saves inside the block (e.g. to answer a command
        with a consistency token, see :mod:`toolkit.http.consistency`)."""
        outer = getattr(self._recorded, "into", None)
        collected: list[Recording[Any]] = []
        self._recorded.into = collected
        try:
            yield collected
        finally:
            self._recorded.into = outer
            if outer is not None:
                outer.extend(collected)

    @property
    def log_file(self) -> Path | None:
        """The SQLite file of the context's log; None for a log elsewhere (PostgreSQL,
        JetStream, SQLite in memory)."""
        from eventsourcing.sqlite import SQLiteDatastore  # (over sqlite3: cheap to import)

        datastore = getattr(self.recorder, "datastore", None)
        if isinstance(datastore, SQLiteDatastore) and not datastore.pool.is_sqlite_memory_mode:
            return Path(datastore.pool.db_name)
        return None

    def _notify(self, recordings: list[Recording[Any]]) -> None:
        if not recordings:
            return
        into = getattr(self._recorded, "into", None)
        if into is not None:
            into.extend(recordings)
        with self._listeners_lock:
            listeners = list(self._saved_listeners)
        for listener in listeners:
            listener(recordings)


class _ProcessingRepository(Repository[Any]):
    """Looks first among the aggregates its context's thread is saving in
    :meth:`BoundedContext.processing` (their events not recorded yet)."""

    processing: threading.local

    def get(self, aggregate_id: Any, *, version: int | None = None, **kwargs: Any) -> Any:
        if version is None:
            processing = getattr(self.processing, "event", None)
            if processing is not None and aggregate_id in processing.aggregates:
                return processing.aggregates[aggregate_id]
        return super().get(aggregate_id, version=version, **kwargs)


def _conflict() -> ConflictError:
    return ConflictError(
        "an aggregate was changed by another command since it was loaded; "
        "nothing was saved: reload it and try again"
    )


def check_id(originator_id: UUID | str) -> None:
    """Refuse a text id that not every log keeps alike or that no subject can carry, with
    :class:`~toolkit.errors.InvalidCommand`: empty, holding NUL (PostgreSQL's text cannot
    hold it), not encodable as UTF-8 (a lone surrogate), or longer than
    :data:`~toolkit.wire.MAX_ID_TOKEN` characters once encoded for a subject.

    Every aggregate is checked, not only those whose events are published: on the
    JetStream log every event goes to a subject of its own, and a mapping added to the
    published language later publishes events stored before it."""
    if not originator_id:
        raise InvalidCommand("an aggregate id must not be empty")
    if isinstance(originator_id, str) and "\x00" in originator_id:
        raise InvalidCommand("an aggregate id must not contain NUL (U+0000)")
    try:
        encode_token(str(originator_id))
    except SubjectError as exc:
        raise InvalidCommand(str(exc)) from None
