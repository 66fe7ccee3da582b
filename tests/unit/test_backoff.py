"""The one back-off helper: doubling up to a cap, jitter within its bounds, a fresh start
after a success, and a wait that ends when the loop is told to stop."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable

import pytest

from toolkit import backoff
from toolkit.backoff import Backoff, cancel_and_wait, delay_after, pause, unless_stopped


def test_delays_double_up_to_the_maximum() -> None:
    backoff = Backoff(first=0.25, maximum=5.0)
    delays = [backoff.advance() for _ in range(8)]
    assert delays == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert backoff.failures == 8


def test_a_success_starts_from_the_first_delay_again() -> None:
    backoff = Backoff(first=1.0, maximum=30.0)
    for _ in range(4):
        backoff.advance()
    assert backoff.delay == 16.0
    backoff.reset()
    assert (backoff.failures, backoff.delay) == (0, 1.0)
    assert backoff.advance() == 1.0
    assert backoff.delay == 2.0


def test_jitter_lengthens_each_delay_by_at_most_its_fraction() -> None:
    backoff = Backoff(first=0.25, maximum=5.0, jitter=0.25)
    for _ in range(200):
        base = min(0.25 * 2 ** min(backoff.failures, 10), 5.0)
        taken = backoff.advance()
        assert base <= taken <= base * 1.25


def test_jitter_bounds_at_the_ends_of_the_uniform_draw() -> None:
    draws = itertools.cycle([0.0, 1.0])
    low = Backoff(first=2.0, maximum=2.0, jitter=0.5, uniform=lambda: next(draws))
    assert low.advance() == 2.0
    assert low.advance() == 3.0


def test_the_delay_quoted_before_a_wait_is_the_delay_waited() -> None:
    backoff = Backoff(first=0.5, maximum=5.0, jitter=1.0)
    quoted = backoff.delay
    assert backoff.advance() == quoted


def test_delay_after_a_count_kept_elsewhere() -> None:
    assert [delay_after(n, 10.0, 60.0) for n in (1, 2, 3, 4, 5)] == [10, 20, 40, 60, 60]
    assert delay_after(0, 10.0, 60.0) == 10.0
    assert delay_after(10_000, 0.25, 5.0) == 5.0  # no overflow after many failures
    assert delay_after(1, 10.0, 60.0, jitter=0.25, uniform=lambda: 1.0) == 12.5


def test_settings_that_cannot_back_off_are_refused() -> None:
    with pytest.raises(ValueError, match="first"):
        Backoff(first=0.0)
    with pytest.raises(ValueError, match="first"):
        Backoff(first=2.0, maximum=1.0)
    with pytest.raises(ValueError, match="jitter"):
        Backoff(jitter=-0.1)


async def test_a_wait_ends_when_stop_is_set() -> None:
    backoff = Backoff(first=60.0, maximum=60.0)
    stop = asyncio.Event()
    waiting = asyncio.create_task(backoff.wait(stop))
    await asyncio.sleep(0)
    assert not waiting.done()
    stop.set()
    assert await asyncio.wait_for(waiting, 5.0) is True


async def test_a_wait_after_stop_returns_at_once() -> None:
    stop = asyncio.Event()
    stop.set()
    assert await asyncio.wait_for(Backoff(first=60.0, maximum=60.0).wait(stop), 1.0) is True


async def test_a_wait_that_is_not_stopped_says_so() -> None:
    stop = asyncio.Event()
    assert await Backoff(first=0.01, maximum=0.01).wait(stop) is False
    assert await pause(None, 0.0) is False


async def test_unless_stopped_gives_the_result_of_work_done_first() -> None:
    stop = asyncio.Event()
    assert await unless_stopped(stop, asyncio.sleep(0, result=7)) == 7
    assert not stop.is_set()


async def test_unless_stopped_cancels_the_work_once_stopped_and_lets_it_unwind() -> None:
    stop = asyncio.Event()
    started, unwound = asyncio.Event(), asyncio.Event()

    async def request() -> int:  # a request to a server that went away: its full timeout
        started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            unwound.set()
        return 1

    waiting = asyncio.ensure_future(unless_stopped(stop, request()))
    await started.wait()
    stop.set()
    assert await asyncio.wait_for(waiting, 5) is None
    assert unwound.is_set()  # its finally blocks ran before unless_stopped returned


async def test_unless_stopped_does_not_start_work_once_stopped() -> None:
    stop = asyncio.Event()
    stop.set()
    ran = []

    async def work() -> int:
        ran.append(1)
        return 1

    assert await unless_stopped(stop, work()) is None
    assert ran == []


async def _slow_to_unwind(unwinding: asyncio.Event) -> None:
    try:
        await asyncio.sleep(60)
    finally:
        unwinding.set()
        await asyncio.sleep(0.2)  # a reader's finally block closing its consumer


async def _cancelled_while_unwinding(
    wait: Callable[[asyncio.Task[None]], Awaitable[object]],
) -> None:
    """A caller is cancelled while it waits for work it cancelled to unwind: it must end
    cancelled, not swallow its own cancellation with the work's and go on (a slice worker
    killed as its reader was being stopped followed its stream forever)."""
    unwinding = asyncio.Event()
    went_on = asyncio.Event()

    async def caller() -> None:
        work = asyncio.create_task(_slow_to_unwind(unwinding))
        await asyncio.sleep(0)  # the work starts
        await wait(work)
        went_on.set()
        await asyncio.sleep(60)

    task = asyncio.create_task(caller())
    await unwinding.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert not went_on.is_set()


async def test_cancel_and_wait_keeps_the_callers_own_cancellation() -> None:
    await _cancelled_while_unwinding(cancel_and_wait)


async def test_unless_stopped_keeps_the_callers_own_cancellation() -> None:
    stop = asyncio.Event()

    async def stopped(work: asyncio.Task[None]) -> object:
        stop.set()
        return await unless_stopped(stop, work)

    await _cancelled_while_unwinding(stopped)


async def test_cancel_and_wait_ends_the_work_and_returns() -> None:
    unwinding = asyncio.Event()
    work = asyncio.create_task(_slow_to_unwind(unwinding))
    await asyncio.sleep(0)
    await cancel_and_wait(work)
    assert work.cancelled() and unwinding.is_set()


async def _swallowing(swallowed: asyncio.Event) -> None:
    """What Python 3.11's ``asyncio.wait_for`` does when a result comes at the moment
    its task is cancelled: the result is returned, the cancellation dropped."""
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        swallowed.set()


async def test_a_cancellation_dropped_below_ends_the_task_at_its_next_wait() -> None:
    """A retry loop whose task was cancelled, but whose CancelledError a library
    dropped, ends at its next pause or next read instead of going on for ever."""
    for wait in (
        lambda: backoff.pause(asyncio.Event(), 30),
        lambda: backoff.Backoff(30, 30).wait(asyncio.Event()),
        lambda: backoff.unless_stopped(asyncio.Event(), asyncio.sleep(30)),
    ):
        swallowed = asyncio.Event()

        async def loop(next_wait: Callable[[], Awaitable[object]] = wait) -> None:
            await _swallowing(swallowed)  # noqa: B023 (each round's own event)
            await next_wait()

        task = asyncio.create_task(loop())
        await asyncio.sleep(0)
        task.cancel()
        async with asyncio.timeout(5):
            with pytest.raises(asyncio.CancelledError):
                await task
        assert swallowed.is_set()
