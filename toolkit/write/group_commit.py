"""Group commit: a context's concurrent saves gathered into one transaction of its log.

eventsourcing records each save in a transaction of its own, and on PostgreSQL it takes
an exclusive lock on the events table for it (notification ids must follow commit order):
under concurrency, commands queue for that lock one at a time, each paying a round trip,
the lock and a commit. With group commit the first save to arrive while none is being
written is written at once, alone (nothing waits for company); the saves that arrive
while it is written are then written together, in the order they came, in one
transaction, by the first of them; and so on.

Conflicts are decided exactly as if the saves were written one by one in that order: if
the shared transaction is refused (two saves of one aggregate's version, a save behind the
log), nothing of it is stored and each save is written again on its own, in the same order,
so that the saves that would have failed fail, with their own error, and the others are
stored. Each save gets back its own notification ids. A save with a tracking record (a
policy's reaction) is never grouped: it is written as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent

Insert = Callable[..., Sequence[int] | None]

MAX_EVENTS = 5_000
"""Events written in one shared transaction at most (the rest wait for the next one)."""


class _Save:
    __slots__ = ("error", "events", "finished", "ids", "turn")

    def __init__(self, events: Sequence[StoredEvent]) -> None:
        self.events = events
        self.turn = threading.Event()
        """Set when the save is written (or failed), or when it is its turn to lead."""
        self.finished = False
        self.ids: Sequence[int] | None = None
        self.error: BaseException | None = None

    def result(self) -> Sequence[int] | None:
        if self.error is not None:
            raise self.error
        return self.ids


class GroupCommit:
    """Wraps a recorder's ``insert_events``: concurrent calls without a tracking record
    are written together (see the module's docstring); others pass through."""

    def __init__(self, insert: Insert, *, max_events: int = MAX_EVENTS) -> None:
        self._insert = insert
        self._max_events = max_events
        self._lock = threading.Lock()
        self._pending: list[_Save] = []
        self._writing = False
        self.groups = 0
        """Shared transactions written (of more than one save): for tests and metrics."""

    def __call__(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Any:
        # (eventsourcing passes ``tracking=None`` for a save without a tracking record)
        if not stored_events or kwargs.keys() - {"tracking"} or kwargs.get("tracking"):
            return self._insert(stored_events, **kwargs)
        save = _Save(stored_events)
        with self._lock:
            self._pending.append(save)
            lead = not self._writing
            self._writing = True
        if not lead:
            save.turn.wait()
            if save.finished:
                return save.result()
        try:
            self._write(self._take())
        finally:
            self._hand_over()
        return save.result()

    def _take(self) -> list[_Save]:
        """The pending saves, oldest first, up to the group's size (at least one)."""
        with self._lock:
            taken, count = 0, 0
            for pending in self._pending:
                count += len(pending.events)
                if taken and count > self._max_events:
                    break
                taken += 1
            group, self._pending = self._pending[:taken], self._pending[taken:]
        return group

    def _hand_over(self) -> None:
        """Make the oldest pending save lead the next group, or stop writing."""
        with self._lock:
            if self._pending:
                self._pending[0].turn.set()
            else:
                self._writing = False

    def _write(self, group: list[_Save]) -> None:
        try:
            if len(group) > 1:
                try:
                    ids = self._insert([event for save in group for event in save.events])
                except Exception:  # a conflict, or the log away: as if one by one
                    pass
                else:
                    self.groups += 1
                    start = 0
                    for save in group:
                        end = start + len(save.events)
                        save.ids = None if ids is None else list(ids[start:end])
                        start = end
                        self._finish(save)
                    return
            for save in group:
                try:
                    save.ids = self._insert(save.events)
                except Exception as exc:
                    save.error = exc
                self._finish(save)
        except BaseException as exc:  # (interrupted: no save may wait for ever)
            for save in group:
                if not save.finished:
                    save.error = exc
                    self._finish(save)
            raise

    @staticmethod
    def _finish(save: _Save) -> None:
        save.finished = True
        save.turn.set()
