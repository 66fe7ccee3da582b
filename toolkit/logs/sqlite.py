"""A context's SQLite log when it reacts: eventsourcing's process recorder, whose tracking
records are fenced by a :class:`~toolkit.logs.fence.FencedTracking`.

Each move of a fenced tracking record is a compare-and-set in the save's transaction: an
``UPDATE`` of the name's record where it still holds the position its writer expected
(an ``INSERT`` where the writer expected none). SQLite lets one writer at a time into a
database, so the check and the move cannot be split by another writer; a move that does
not hold raises :class:`~eventsourcing.persistence.IntegrityError` inside the transaction,
which is rolled back: nothing of the save is stored, neither its events nor any of its
tracking records. A plain :class:`~eventsourcing.persistence.Tracking` is stored as
eventsourcing stores it.
"""

from __future__ import annotations

from typing import ClassVar

from eventsourcing.persistence import ProgrammingError, Tracking
from eventsourcing.sqlite import SQLiteCursor, SQLiteProcessRecorder

from toolkit.logs.fence import FencedTracking, refusal


class FencedSQLiteProcessRecorder(SQLiteProcessRecorder):
    """eventsourcing's SQLite process recorder, honouring :class:`FencedTracking`."""

    fences_tracking: ClassVar[bool] = True

    def _insert_tracking(self, c: SQLiteCursor, tracking: Tracking) -> None:
        if not isinstance(tracking, FencedTracking):
            super()._insert_tracking(c, tracking)
            return
        if not self.datastore.single_row_tracking:
            raise ProgrammingError(
                "a fenced tracking record needs single-row tracking (one record per "
                "name): this SQLite log keeps a row per position (SINGLE_ROW_TRACKING=no)"
            )
        for move in tracking.moves:
            if move.expected is None:
                c.execute(
                    "INSERT INTO tracking VALUES (?, ?) ON CONFLICT (application_name) DO NOTHING",
                    (move.name, move.position),
                )
            else:
                c.execute(
                    "UPDATE tracking SET notification_id=? "
                    "WHERE application_name=? AND notification_id=?",
                    (move.position, move.name, move.expected),
                )
            if c.sqlite_cursor.rowcount != 1:
                raise refusal(move, self._max_tracking_id(move.name, c))
