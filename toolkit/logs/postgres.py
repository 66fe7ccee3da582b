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

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

from eventsourcing.postgres import PostgresApplicationRecorder, PostgresProcessRecorder

M = TypeVar("M", bound=Callable[..., Any])


def _with_text_id(method: M) -> M:
    """``method`` of eventsourcing's recorder, given its ``originator_id`` as text (by
    position or by name): its signature stays eventsourcing's own."""

    @functools.wraps(method)
    def with_text_id(self: object, originator_id: object, *args: Any, **kwargs: Any) -> Any:
        return method(self, str(originator_id), *args, **kwargs)

    return cast(M, with_text_id)


class TextIdPostgresRecorder(PostgresApplicationRecorder):
    """eventsourcing's PostgreSQL application recorder, with UUIDs passed as text: in
    what it writes (the stored events' composite values) and in the ids it looks up."""

    construct_pg_stored_event = _with_text_id(PostgresApplicationRecorder.construct_pg_stored_event)
    select_events = _with_text_id(PostgresApplicationRecorder.select_events)


class TextIdPostgresProcessRecorder(PostgresProcessRecorder):
    """eventsourcing's PostgreSQL process recorder (events and tracking records in one
    transaction), with UUIDs passed as text as :class:`TextIdPostgresRecorder` does."""

    construct_pg_stored_event = _with_text_id(PostgresProcessRecorder.construct_pg_stored_event)
    select_events = _with_text_id(PostgresProcessRecorder.select_events)
