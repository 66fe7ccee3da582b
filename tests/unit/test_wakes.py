"""The in-process relay's wakes by a command run for a request: postponed until the
command's thread has handed back, never lost (toolkit.write.wakes)."""

from __future__ import annotations

import threading

from toolkit.write import wakes


def _calls() -> tuple[list[str], wakes.Wake, wakes.Wake]:
    made: list[str] = []
    return made, lambda: made.append("soon"), lambda: made.append("now")


def test_a_thread_that_postpones_nothing_wakes_at_once() -> None:
    made, soon, now = _calls()
    wakes.wake(soon, now)
    assert made == ["now"]


def test_postponed_wakes_are_made_once_by_the_event_loop_and_later_ones_at_once() -> None:
    made, soon, now = _calls()
    postponed = wakes.Postponed()

    def command() -> None:
        with wakes.postponing(postponed):
            wakes.wake(soon, now)
            wakes.wake(soon, now)  # (the same relay: one wake)
        wakes.wake(soon, now)  # (outside: at once)

    thread = threading.Thread(target=command)
    thread.start()
    thread.join()
    assert made == ["now"]
    postponed.make()
    assert made == ["now", "soon"]
    postponed.make()
    assert made == ["now", "soon"]


def test_a_wake_after_the_caller_stopped_waiting_is_made_from_the_thread() -> None:
    """A cancelled request's command goes on, and its save still wakes the relay."""
    made, soon, now = _calls()
    postponed = wakes.Postponed()
    postponed.make()  # (the request was cancelled: its run_command made what it had)
    with wakes.postponing(postponed):
        wakes.wake(soon, now)
    assert made == ["now"]


def test_postponing_nests_and_ends() -> None:
    made, soon, now = _calls()
    outer, inner = wakes.Postponed(), wakes.Postponed()
    with wakes.postponing(outer):
        with wakes.postponing(inner):
            wakes.wake(soon, now)
        wakes.wake(soon, now)
    wakes.wake(soon, now)
    assert made == ["now"]
    inner.make()
    outer.make()
    assert made == ["now", "soon", "soon"]
