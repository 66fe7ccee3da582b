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

Listeners added with :meth:`GroupCommit.on_commit` are given the saves just written
(their events as stored, and their log positions), by the writing thread, before any of
their threads goes on (and :attr:`GroupCommit.writing_since` says a write is under way,
whose saves the log may show before the listeners are told): the in-process relay's
outbox builds the messages of the whole transaction there, once, in log order, rather
than wait for each thread (they wake in any order) or read the saves back (see
:mod:`toolkit.write.outbox`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent

Insert = Callable[..., Sequence[int] | None]
Written = list[tuple[Sequence[int], Sequence[StoredEvent]]]
"""Saves written in one transaction, in log order: each one's log positions and events."""
Committed = Callable[[Written], None]

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
        self._committed: list[Committed] = []
        self.writing_since: float | None = None
        """When (``time.monotonic()``) the write under way began, until its listeners
        are told (None: none is)."""

    def on_commit(self, listener: Committed) -> Callable[[], None]:
        """Call ``listener`` with the saves written in a transaction (see :data:`Written`),
        right after it committed and before their threads go on (only saves written
        here, given their ids: not those that pass through); returns a function that
        removes it. A listener's error is ignored: the saves are stored."""
        with self._lock:
            self._committed = [*self._committed, listener]

        def remove() -> None:
            with self._lock:
                self._committed = [kept for kept in self._committed if kept is not listener]

        return remove

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
                    ids = self._begin([event for save in group for event in save.events])
                except Exception:  # a conflict, or the log away: as if one by one
                    pass
                else:
                    self.groups += 1
                    start = 0
                    for save in group:
                        end = start + len(save.events)
                        save.ids = None if ids is None else list(ids[start:end])
                        start = end
                    self._announce(group)
                    for save in group:
                        self._finish(save)
                    return
            for save in group:
                try:
                    save.ids = self._begin(save.events)
                except Exception as exc:
                    save.error = exc
                else:
                    self._announce([save])
                self._finish(save)
        except BaseException as exc:  # (interrupted: no save may wait for ever)
            for save in group:
                if not save.finished:
                    save.error = exc
                    self._finish(save)
            raise
        finally:
            self.writing_since = None

    def _begin(self, stored_events: Sequence[StoredEvent]) -> Sequence[int] | None:
        self.writing_since = time.monotonic()
        return self._insert(stored_events)

    def _announce(self, saves: list[_Save]) -> None:
        listeners = self._committed
        if listeners:
            written: Written = [(save.ids, save.events) for save in saves if save.ids]
            for listener in listeners:
                with contextlib.suppress(Exception):
                    listener(written)
        self.writing_since = None  # (after the listeners: see Outbox.read)

    @staticmethod
    def _finish(save: _Save) -> None:
        save.finished = True
        save.turn.set()
