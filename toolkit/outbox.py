"""A context's log read as an outbox: the published events after a log position, as
messages ready for the stream.

The relay spends its time here, so this reads the way eventsourcing would, minus what a
relay does not need: on a SQLite log the rows come straight from the events table as
tuples (no ``Notification`` objects, ids converted in C), and only the topics of the
published language are selected. Decoding into domain events is eventsourcing's own
mapper (cipher, compression and upcasting included), because the published language's
mappings are written against domain events.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, cast
from uuid import UUID

from eventsourcing.sqlite import SQLiteApplicationRecorder

from toolkit.published import OutgoingMessage, Publishable
from toolkit.transcoder import decode_uuid

if TYPE_CHECKING:
    from toolkit.context import BoundedContext


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


class Outbox:
    """Reads a context's published events as outgoing messages, a page at a time."""

    def __init__(self, context: BoundedContext) -> None:
        self.context = context
        self.language = context.published_language
        self.topics = self.language.topics
        self._rows: Rows = _sqlite_rows(context, self.topics) or self._notification_rows

    def read(self, after: int, stop: int, limit: int) -> Page:
        """The messages of the published events in ``(after, stop]``, at most ``limit``
        events read."""
        if not self.topics:
            return Page([], stop)  # nothing is published: the whole log is private
        rows = self._rows(after, stop, limit)
        to_domain_event = self.context.mapper.to_domain_event
        mapping_of = self.language.mapping
        message = self.language.message
        messages = []
        for row in rows:
            mapping = mapping_of(row.topic)
            if mapping is None:
                continue
            event = cast(Publishable, to_domain_event(row))  # type: ignore[arg-type]
            built = message(mapping, event, row.id)
            if built is not None:
                messages.append(built)
        return Page(messages, rows[-1].id if len(rows) == limit else stop)

    def _notification_rows(self, after: int, stop: int, limit: int) -> list[StoredRow]:
        """Any recorder (PostgreSQL, the JetStream log): eventsourcing's own query."""
        return [
            StoredRow(n.id, n.originator_id, n.originator_version, n.topic, n.state)
            for n in self.context.recorder.select_notifications(
                start=after, limit=limit, stop=stop, topics=self.topics, inclusive_of_start=False
            )
        ]


def _sqlite_rows(context: BoundedContext, topics: list[str]) -> Rows | None:
    """The query of eventsourcing's SQLite recorder, returning tuples."""
    recorder = context.recorder
    if type(recorder) is not SQLiteApplicationRecorder or not topics:
        return None
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
            return [make(p, to_id(i), v, t, s) for p, i, v, t, s in cursor.fetchall()]

    return rows
