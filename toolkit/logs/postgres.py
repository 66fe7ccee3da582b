"""A context's PostgreSQL log when it holds text ids beside UUIDs.

eventsourcing's PostgreSQL recorder keeps ids in a ``uuid`` column, or with
``ORIGINATOR_ID_TYPE=text`` in a ``text`` one; but it hands UUIDs to psycopg as they are,
which sends them as ``uuid`` values that a ``text`` column neither takes in a composite
nor compares with (``operator does not exist: text = uuid``). So a context that saves
both kinds of aggregates (``BoundedContext[UUID | str]``) uses this recorder on
PostgreSQL: a UUID is written and looked up as its canonical text, the form
``ALTER TABLE ... ALTER COLUMN originator_id TYPE text`` gives the ids of a log created
for UUIDs. Reading is unchanged: eventsourcing's mapper turns the text back into a UUID
for event classes with UUID ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PgStoredEvent, PostgresApplicationRecorder


class TextIdPostgresRecorder(PostgresApplicationRecorder):
    """eventsourcing's PostgreSQL application recorder, with UUIDs passed as text."""

    def construct_pg_stored_event(
        self, originator_id: UUID | str, originator_version: int, topic: str, state: bytes
    ) -> PgStoredEvent:
        return super().construct_pg_stored_event(
            str(originator_id), originator_version, topic, state
        )

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        found: Sequence[StoredEvent] = super().select_events(
            str(originator_id), gt=gt, lte=lte, desc=desc, limit=limit
        )
        return found
