"""A context's log read as an outbox: the published events after a log position, as
messages ready for the stream.

The relay spends its time here, so this reads the way eventsourcing would, minus what a
relay does not need: on a SQLite log the rows come straight from the events table as
tuples (no ``Notification`` objects, ids converted in C), and only the topics of the
published language are selected. The published language's mappings are written against
domain events, so each event is decoded into one: by a typed decoder of its class
(:func:`~toolkit.write.transcoder.state_decoder`: msgspec reads and checks the stored
state against the class's annotations in C, about a third of the transcoder's time and
none of the mapper's layers) where the class's annotations allow and the state fits
them, else by eventsourcing's own mapper (always with a cipher, compression or a class
version to upcast from). Both give the same domain event (the keys of its dict aside,
which come in the annotations' order).

In the context's own process the log need not be read back at all: while the relay runs
there (:meth:`Outbox.handing_over`), each save of this process builds its messages from
the domain events it just stored and hands them over, keyed by log position. The log
stays the only source of truth: a page is taken from the hand-off only when it starts
right after the position asked for, and whatever was not handed over (saves of other
processes, a hand-off that was full, a translation that failed) is read from the log.

With group commit (:mod:`toolkit.write.group_commit`) the saves of one transaction are
committed together, and their threads then go on in any order: a thread left waiting for
the processor would hold back the messages of every save after its own. So the writing
thread gives the outbox the transaction's saves as soon as it has committed, before their
threads go on: their events as stored and their log positions, exactly what a read of
the log would return for them. The outbox builds their messages as it builds those of a
log read (the same rows, the same decoding) and hands them over as one page, in log
order, and wakes the relay; the saves' threads then have nothing left to translate.

Where that page cannot be built (not one run of the log, the hand-off full, a
translation failing), the outbox notes the saves as coming, and :meth:`Outbox.read`
(``wait=True``, the relay's way) waits for each to hand over on its own instead of
reading it back: it returns an empty page that ends where it began, and the relay reads
again once a save wakes it. It waits alike while a write of the group commit is under
way (the relay may have seen its saves in the log first: on PostgreSQL each commit wakes
it). Each save clears its position as it comes to the hand-off, whether it handed
anything over or not, and wakes the relay; whatever is waited for (a save that never got
there, a listener before the outbox's having raised; another process's save found while
this one's write is under way) is read from the log once the read has waited
:data:`PATIENCE` at that position.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, cast
from uuid import UUID

import msgspec
from eventsourcing.persistence import (
    Mapper,
    Recording,
    find_id_convertor,
    pass_through_convertor,
    str_to_uuid_convertor,
)
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteProcessRecorder
from eventsourcing.utils import resolve_topic

from toolkit.logs.sqlite import FencedSQLiteProcessRecorder
from toolkit.write.causation import KEY, CausalMapper, Causation
from toolkit.write.group_commit import Written
from toolkit.write.published import Mapping, OutgoingMessage, Publishable
from toolkit.write.transcoder import StateDecoder, decode_uuid, state_decoder

if TYPE_CHECKING:
    from toolkit.write.context import BoundedContext


class StoredRow(NamedTuple):
    """One stored event with its log position; it has what eventsourcing's mapper reads
    of a ``StoredEvent``."""

    id: int
    originator_id: UUID | str
    originator_version: int
    topic: str
    state: bytes


class Page(NamedTuple):
    messages: list[OutgoingMessage]
    position: int
    """The log position read up to: the last row read, or ``stop`` when fewer than
    ``limit`` rows were left (private events between are skipped by the query)."""


Rows = Callable[[int, int, int], Sequence[StoredRow]]

PATIENCE = 0.1
"""Seconds :meth:`Outbox.read` waits at most, at one position, for a save of this process
to hand over (its thread is on its way: normally well under a millisecond), before it
reads the log there instead."""


class Outbox:
    """Reads a context's published events as outgoing messages, a page at a time."""

    def __init__(self, context: BoundedContext[Any], *, handoff_limit: int = 10_000) -> None:
        self.context = context
        self.language = context.published_language
        self.topics = self.language.topics
        self._rows: Rows = _sqlite_rows(context, self.topics) or self._notification_rows
        self._tuples: Rows = _sqlite_rows(context, self.topics, tuples=True) or self._rows
        mapper = context.mapper
        self._typed = (
            type(mapper) in (Mapper, CausalMapper) and not mapper.cipher and not mapper.compressor
        )
        """Whether events may be decoded by typed decoders instead of the mapper: it
        is eventsourcing's own (or the causal one), with no cipher and no compression."""
        self._plans: dict[str, _Plan | None] = {}
        self.handoff_limit = handoff_limit
        """At most this many messages wait in the hand-off; saves beyond it are read
        from the log when their turn comes (the relay is away or far behind)."""
        self.pages_handed_over = 0
        self.pages_read = 0
        self._handed: dict[int, Page] = {}
        """First log position of a save -> its messages and its last log position."""
        self._handed_messages = 0
        self._handed_lock = threading.Lock()
        self._handing_over = False
        self._read_up_to = 0
        """The position the last read ended at: a save at or before it comes too late."""
        self.saved_up_to = 0
        """The last log position of the saves this process committed while handing over
        (all of them, handed over or not): the log's head, as far as they go."""
        self.patience = PATIENCE
        """See :data:`PATIENCE`."""
        self.waits = 0
        """Reads that found the save after the position asked for committed by this process
        and not handed over yet, and waited for it (``wait=True``)."""
        self._coming: set[int] = set()
        """First log positions of the saves this process committed (told by the group
        commit) that have not come to :meth:`_hand_over` yet."""
        self._covered: set[int] = set()
        """First log positions of the saves whose messages their transaction's page holds
        (built by :meth:`_committed`): nothing is left for them to hand over."""
        self._published = frozenset(self.topics)
        self.wake: Callable[[], None] | None = None
        """Called (from the writing thread) when a transaction's page is handed over:
        the relay's wake, while it runs."""
        self._waiting: tuple[int, float, float | None] = (-1, 0.0, None)
        """The position :meth:`read` last waited at, since when, and the write of the
        group commit that was under way then."""

    @contextlib.contextmanager
    def handing_over(self) -> Iterator[None]:
        """While inside, every save of this process hands its messages over, built from
        the domain events it stored (with group commit, the writing thread hands over
        its transaction's, built from the events as stored), so :meth:`read` need not
        read them back. Costs the saving (or writing) thread the translation of its
        events (a few µs each); a no-op when already handing over or when nothing is
        published."""
        if self._handing_over or not self.topics:
            yield
            return
        self._handing_over = True
        stop = self.context.on_saved(self._hand_over)
        group = self.context.group_commit
        stop_committed = group.on_commit(self._committed) if group is not None else None
        try:
            yield
        finally:
            if stop_committed is not None:
                stop_committed()
            stop()
            self._handing_over = False
            with self._handed_lock:
                self._handed.clear()
                self._handed_messages = 0
                self._coming.clear()
                self._covered.clear()

    @property
    def takes_saves(self) -> bool:
        """Whether every save of this process is seen here (:meth:`handing_over`), so that
        :attr:`saved_up_to` says where they end."""
        return self._handing_over

    def _committed(self, saves: Written) -> None:
        """Called by the group commit's writing thread right after saves committed in one
        transaction, before their threads go on to :meth:`_hand_over`: their messages,
        built as from a read of the log, are handed over as one page (or, where that
        cannot be, the saves are noted as coming)."""
        positions = [position for ids, _ in saves for position in ids]
        if not positions:
            return
        first, last = positions[0], positions[-1]
        page = None
        if (
            last - first + 1 == len(positions)
            and last > self._read_up_to
            and self._handed_messages + len(positions) <= self.handoff_limit
        ):
            # (failing, each save translates on its own: a failing one is read from the
            # log, where the relay reports it)
            with contextlib.suppress(Exception):
                page = self._transaction_page(saves, last)
        with self._handed_lock:
            self.saved_up_to = max(self.saved_up_to, last)
            if page is not None:
                self._handed[first] = page
                self._handed_messages += max(1, len(page.messages))
                self._covered.update(ids[0] for ids, _ in saves)
            else:
                self._coming.update(ids[0] for ids, _ in saves if ids[-1] > self._read_up_to)
        wake = self.wake
        if page is not None and wake is not None:
            wake()

    def _transaction_page(self, saves: Written, last: int) -> Page | None:
        """The page of one transaction's saves, built from their stored events as
        from the rows a read of the log returns for them."""
        published = self._published
        rows = [
            StoredRow(position, e.originator_id, e.originator_version, e.topic, e.state)
            for ids, events in saves
            for position, e in zip(ids, events, strict=True)
            if e.topic in published
        ]
        messages = self._typed_messages(rows) if self._typed else self._row_messages(rows)
        return Page(messages, last)

    def _hand_over(self, recordings: Sequence[Recording[Any]]) -> None:
        """Called by the saving thread right after its save committed."""
        first = recordings[0].notification.id
        last = recordings[-1].notification.id
        if self._covered:
            with self._handed_lock:
                if first in self._covered:
                    self._covered.discard(first)
                    return  # (in its transaction's page)
        page = None
        try:
            page = self._page(recordings, first, last)
        finally:  # (whatever happened, the save is no longer to be waited for)
            with self._handed_lock:
                self.saved_up_to = max(self.saved_up_to, last)
                if page is not None:
                    self._handed[first] = page
                    self._handed_messages += max(1, len(page.messages))
                self._coming.discard(first)

    def _page(self, recordings: Sequence[Recording[Any]], first: int, last: int) -> Page | None:
        """The page of a save, or None when it is to be read from the log."""
        if last - first + 1 != len(recordings):
            return None  # not one run of the log: the relay reads it from there
        if last <= self._read_up_to:
            return None  # read from the log already (the relay did not wait for it)
        if self._handed_messages + len(recordings) > self.handoff_limit:
            return None
        try:
            cause_of = self._causes()  # the saving thread's: a reaction's, or None
            messages = self._messages(
                (r.notification.topic, r.domain_event, r.notification.id, cause_of(r.domain_event))
                for r in recordings
            )
        except Exception:  # the command succeeded: the relay reads this save from the
            return None  # log and reports the failing translation there
        return Page(messages, last)

    def read(self, after: int, stop: int, limit: int, *, wait: bool = False) -> Page:
        """The messages of the published events in ``(after, stop]``, at most ``limit``
        events read from the log; a save handed over is taken whole, and may end after
        ``stop`` (it is stored: saves hand over after they commit).

        With ``wait``, when the save right after ``after`` was committed by this process
        and has not handed over yet, or may be (a write of the group commit is under
        way), the page is empty and ends at ``after`` (nothing is read): read again once
        a save of this process has handed over (its ``on_saved`` listeners run after the
        outbox's). Once reads have waited :attr:`patience` at ``after``, the log is read."""
        group = self.context.group_commit if wait and self._handing_over else None
        # (read before _coming: a write's saves are in it before the write is over)
        writing = None if group is None else group.writing_since
        if self._handed or self._coming or writing is not None:
            coming = False
            with self._handed_lock:
                page = self._handed.pop(after + 1, None)
                if page is not None:
                    self._handed_messages -= max(1, len(page.messages))
                elif wait:
                    coming = after + 1 in self._coming
            if page is not None:
                self.pages_handed_over += 1
                self._read_up_to = page.position
                return page
            if coming or writing is not None:
                now = time.monotonic()
                at, since, write = self._waiting
                if at != after:
                    at, since, write = self._waiting = (after, now, writing)
                # (once the write under way then is told of, and the save is not coming,
                # it is another process's: read at once)
                if (coming or writing == write) and now - since < self.patience:
                    self.waits += 1
                    return Page([], after)
        page = self._read_log(after, stop, limit)
        self.pages_read += 1
        self._read_up_to = page.position
        if self._handed or self._coming:
            self._forget_up_to(page.position)
        return page

    def _causes(self) -> Callable[[object], Causation | None]:
        mapper = self.context.mapper
        return mapper.cause_of if isinstance(mapper, CausalMapper) else lambda _: None

    def _forget_up_to(self, position: int) -> None:
        """Drop saves handed over (or coming) that a log read went past."""
        with self._handed_lock:
            for first in [first for first in self._handed if first <= position]:
                self._handed_messages -= max(1, len(self._handed.pop(first).messages))
            self._coming = {first for first in self._coming if first > position}
            self._covered = {first for first in self._covered if first > position}

    def _read_log(self, after: int, stop: int, limit: int) -> Page:
        if not self.topics:
            return Page([], stop)  # nothing is published: the whole log is private
        if self._typed:
            rows = self._tuples(after, stop, limit)
            return Page(self._typed_messages(rows), rows[-1][0] if len(rows) == limit else stop)
        rows = self._rows(after, stop, limit)
        return Page(self._row_messages(rows), rows[-1].id if len(rows) == limit else stop)

    def _row_messages(self, rows: Sequence[StoredRow]) -> list[OutgoingMessage]:
        """The messages of rows of published topics, decoded by the mapper."""
        mapper = self.context.mapper
        if isinstance(mapper, CausalMapper):
            decode = mapper.decode
            decoded = ((r, *decode(r)) for r in rows)  # type: ignore[arg-type]
            return self._messages((r.topic, e, r.id, cause) for r, e, cause in decoded)
        to_domain_event = mapper.to_domain_event
        return self._messages(
            (r.topic, to_domain_event(r), r.id, None)  # type: ignore[arg-type]
            for r in rows
        )

    def _typed_messages(self, rows: Sequence[StoredRow]) -> list[OutgoingMessage]:
        """:meth:`_messages` of rows decoded by their classes' typed decoders (see
        :func:`~toolkit.write.transcoder.state_decoder`) where they have one and the
        state fits it, the rest by the mapper: the same domain events either way."""
        plans = self._plans
        message = self.language.message
        mapper = self.context.mapper
        general = mapper.decode if isinstance(mapper, CausalMapper) else None
        new = object.__new__
        set_attribute = object.__setattr__
        messages = []
        for row in rows:
            position, originator_id, version, topic, state = row
            plan = plans.get(topic, _UNPLANNED)
            if plan is _UNPLANNED:
                plan = plans[topic] = self._plan(topic)
            cause: Causation | None = None
            if plan is not None:
                mapping, event_class, decoder, to_id = plan
                try:
                    event_state, kept = decoder(state)
                except msgspec.DecodeError:  # (ValidationError is one)
                    plan = None  # (a state of another shape: the general way)
                else:
                    event_state["originator_id"] = to_id(originator_id)
                    event_state["originator_version"] = version
                    event = new(event_class)
                    set_attribute(event, "__dict__", event_state)
                    if kept is not None:
                        cause = Causation(*kept)
            if plan is None:
                mapping = self.language.mapping(topic)
                if mapping is None:
                    continue
                stored = StoredRow(*row)
                if general is not None:
                    event, cause = general(stored)  # type: ignore[arg-type]
                else:
                    event = mapper.to_domain_event(stored)  # type: ignore[arg-type]
            built = message(mapping, event, position, cause)
            if built is not None:
                messages.append(built)
        return messages

    def _plan(self, topic: str) -> _Plan | None:
        """How the outbox decodes the events of ``topic`` itself, if it can: published,
        of a class whose annotations a typed decoder covers, in no later class version
        (upcasting is the mapper's), ids converted as the mapper converts them."""
        mapping = self.language.mapping(topic)
        if mapping is None:
            return None
        try:
            event_class = resolve_topic(topic)
        except Exception:
            return None  # the mapper says why, event by event
        if getattr(event_class, "class_version", 1) != 1:
            return None
        decoder = state_decoder(self.context.mapper.transcoder, event_class, KEY)
        if decoder is None:
            return None
        to_id = _uuid_or_as_is(event_class)
        return None if to_id is None else (mapping, event_class, decoder, to_id)

    def _messages(
        self, events: Iterable[tuple[str, object, int, Causation | None]]
    ) -> list[OutgoingMessage]:
        """The messages of (topic, domain event, log position, cause), published ones only."""
        mapping_of = self.language.mapping
        message = self.language.message
        messages = []
        for topic, event, position, cause in events:
            mapping = mapping_of(topic)
            if mapping is not None:
                built = message(mapping, cast(Publishable, event), position, cause)
                if built is not None:
                    messages.append(built)
        return messages

    def _notification_rows(self, after: int, stop: int, limit: int) -> list[StoredRow]:
        """Any recorder (PostgreSQL, the JetStream log): eventsourcing's own query."""
        return [
            StoredRow(n.id, n.originator_id, n.originator_version, n.topic, n.state)
            for n in self.context.recorder.select_notifications(
                start=after, limit=limit, stop=stop, topics=self.topics, inclusive_of_start=False
            )
        ]


_Plan = tuple[Mapping[Any, Any], type, StateDecoder, Callable[[Any], Any]]
"""A topic's mapping, event class, typed decoder and conversion of originator ids."""
_UNPLANNED: Any = object()


def _uuid_or_as_is(event_class: type) -> Callable[[Any], Any] | None:
    """The mapper's conversion of originator ids read from the log for ``event_class``,
    with UUIDs parsed in C (None: the mapper's own, whatever it is, is left to it)."""
    try:
        str_convertor = find_id_convertor(event_class, str)
    except Exception:
        return None
    if str_convertor is pass_through_convertor:
        return _as_is
    if str_convertor is not str_to_uuid_convertor:
        return None
    return _to_uuid


def _as_is(value: Any) -> Any:
    return value


def _to_uuid(value: Any) -> Any:
    return decode_uuid(value) if type(value) is str else value


_SQLITE_RECORDERS = (SQLiteApplicationRecorder, SQLiteProcessRecorder, FencedSQLiteProcessRecorder)
"""The recorders whose events table is eventsourcing's SQLite one (not a subclass that may
keep its events elsewhere)."""


def _sqlite_rows(
    context: BoundedContext[Any], topics: list[str], *, tuples: bool = False
) -> Rows | None:
    """The query of eventsourcing's SQLite recorder, returning tuples (``tuples``: plain
    ones where the ids need no conversion, as unpacked alike)."""
    recorder = context.recorder
    if type(recorder) not in _SQLITE_RECORDERS or not topics:
        return None
    assert isinstance(recorder, SQLiteApplicationRecorder)  # a process recorder is one too
    datastore = recorder.datastore
    statement = (
        f"SELECT rowid, originator_id, originator_version, topic, state "
        f"FROM {recorder.events_table_name} WHERE rowid>? AND rowid<=? "
        f"AND topic IN ({','.join('?' * len(topics))}) ORDER BY rowid LIMIT ?"
    )
    to_id: Callable[[str], Any] = (
        decode_uuid if datastore.originator_id_type == "uuid" else lambda id_: id_
    )
    make = StoredRow

    def rows(after: int, stop: int, limit: int) -> list[StoredRow]:
        with datastore.transaction(commit=False) as transaction:
            cursor = transaction.sqlite_cursor
            cursor.row_factory = None  # tuples, not sqlite3.Row
            cursor.execute(statement, (after, stop, *topics, limit))
            found = cursor.fetchall()
        if tuples and datastore.originator_id_type != "uuid":
            return found  # (the typed decoding's: unpacked)
        return [make(p, to_id(i), v, t, s) for p, i, v, t, s in found]

    return rows
