"""Wakes of the in-process relay, postponed until a command's thread has handed back.

A save wakes the relay of its process from the saving thread, and the event loop then
runs the relay's turn (its messages built and sent) before the turn of the request that
waits for that very command, whose thread is still returning: one request at a time,
every answer waited for its event's publishing. A command run for a request
(:func:`toolkit.http.consistency.run_command`) postpones its thread's wakes instead, and
makes them on the event loop once it has its result: the relay runs right after the
answer is on its way, and the loop is woken once for both.

Whatever its thread does, a wake is never lost: one made after the caller has stopped
waiting (a cancelled request whose command goes on) is made from the thread, as if
nothing were postponed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

Wake = Callable[[], None]

_local = threading.local()


class Postponed:
    """The wakes a thread postponed, for the event loop to make (:meth:`make`)."""

    __slots__ = ("_calls", "_lock", "_made")

    def __init__(self) -> None:
        self._calls: list[tuple[Wake, Wake]] = []
        self._lock = threading.Lock()
        self._made = False

    def add(self, soon: Wake, now: Wake) -> None:
        """Postpone ``soon`` (made on the event loop); once :meth:`make` has run, ``now``
        is called at once instead (from the thread)."""
        with self._lock:
            if not self._made:
                if all(kept is not soon for kept, _ in self._calls):
                    self._calls.append((soon, now))
                return
        now()

    def make(self) -> None:
        """Make the wakes postponed so far (on the event loop); later ones are made at once."""
        with self._lock:
            self._made = True
            calls, self._calls = self._calls, []
        for soon, _ in calls:
            soon()


@contextlib.contextmanager
def postponing(postponed: Postponed) -> Iterator[None]:
    """While inside, this thread's wakes (:func:`wake`) go to ``postponed``."""
    previous = getattr(_local, "postponed", None)
    _local.postponed = postponed
    try:
        yield
    finally:
        _local.postponed = previous


def wake(soon: Wake, now: Wake) -> None:
    """``now()`` (a wake from any thread), unless this thread postpones its wakes:
    then ``soon()`` is made on the event loop once the command has handed back."""
    postponed: Postponed | None = getattr(_local, "postponed", None)
    if postponed is None:
        now()
    else:
        postponed.add(soon, now)
