"""A context's PostgreSQL log: fenced tracking records, and text ids beside UUIDs.

:class:`FencedPostgresProcessRecorder` is eventsourcing's process recorder honouring a
:class:`~toolkit.logs.fence.FencedTracking`: each move is a compare-and-set in the save's
transaction, an ``UPDATE ... WHERE application_name = %s AND notification_id = %s`` (an
``INSERT ... ON CONFLICT DO NOTHING`` where its writer expected no record). Under READ
COMMITTED a concurrent mover's UPDATE waits for the row and then finds it moved, so one
of two racing writers of a record fails; a move that does not hold raises
:class:`~eventsourcing.persistence.IntegrityError` and the transaction is rolled back,
events included. It needs single-row tracking (eventsourcing's default); on a log that
keeps a row per position (``SINGLE_ROW_TRACKING=no``) a fenced tracking record is refused.

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
from typing import Any, ClassVar, TypeVar, cast

from eventsourcing.persistence import ProgrammingError, Tracking
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresProcessRecorder
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

from toolkit.logs.fence import FencedTracking, Move, refusal

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


class FencedPostgresProcessRecorder(PostgresProcessRecorder):
    """eventsourcing's PostgreSQL process recorder (events and tracking records in one
    transaction), honouring :class:`FencedTracking`."""

    fences_tracking: ClassVar[bool] = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        table = (Identifier(self.datastore.schema), Identifier(self.tracking_table_name))
        self.insert_first_tracking_statement = SQL(
            "INSERT INTO {0}.{1} (application_name, notification_id) "
            "SELECT * FROM unnest(%s::text[], %s::bigint[]) "
            "ON CONFLICT (application_name) DO NOTHING RETURNING application_name"
        ).format(*table)
        self.move_tracking_statement = SQL(
            "UPDATE {0}.{1} AS t SET notification_id = m.position "
            "FROM unnest(%s::text[], %s::bigint[], %s::bigint[]) AS m(name, expected, position) "
            "WHERE t.application_name = m.name AND t.notification_id = m.expected "
            "RETURNING t.application_name"
        ).format(*table)

    def _insert_tracking(self, curs: Cursor[DictRow], tracking: Tracking) -> None:
        """A fenced record's moves in (at most) two statements, whatever their number: one
        inserting the names new, one moving the others from where their writer expects
        them (a worker's run moves up to one record a slice: a statement each, each
        waiting for its answer, cost a sliced policy a quarter of its rate)."""
        if not isinstance(tracking, FencedTracking):
            super()._insert_tracking(curs, tracking)
            return
        if not self.datastore.single_row_tracking:
            raise ProgrammingError(
                "a fenced tracking record needs single-row tracking (one record per "
                "name): this PostgreSQL log keeps a row per position (SINGLE_ROW_TRACKING=no)"
            )
        moves = tracking.moves
        if len({m.name for m in moves}) != len(moves):  # a name moved twice: in turn
            for move in moves:
                self._move(curs, [move])
        else:
            self._move(curs, [m for m in moves if m.expected is None])
            self._move(curs, [m for m in moves if m.expected is not None])

    def _move(self, curs: Cursor[DictRow], moves: list[Move]) -> None:
        """Moves all new (``expected`` None) or all not; refused unless each one holds."""
        if not moves:
            return
        names = [m.name for m in moves]
        positions = [m.position for m in moves]
        if moves[0].expected is None:
            curs.execute(self.insert_first_tracking_statement, (names, positions), prepare=True)
        else:
            expected = [m.expected for m in moves]
            curs.execute(self.move_tracking_statement, (names, expected, positions), prepare=True)
        done = {row["application_name"] for row in curs.fetchall()}
        for move in moves:
            if move.name not in done:
                raise refusal(move, self._max_tracking_id(move.name, curs))


class TextIdPostgresProcessRecorder(FencedPostgresProcessRecorder):
    """The fenced PostgreSQL process recorder, with UUIDs passed as text as
    :class:`TextIdPostgresRecorder` does."""

    construct_pg_stored_event = _with_text_id(PostgresProcessRecorder.construct_pg_stored_event)
    select_events = _with_text_id(PostgresProcessRecorder.select_events)
