"""Back-off between attempts: the one owner of "wait longer each time it fails".

Every loop that retries something (the relay starting over from the stream, a connection
replacing a closed client, a projector going on from its checkpoint, a webhook delivery)
waits a delay that doubles from ``first`` up to ``maximum``, starts from ``first`` again
once an attempt succeeds, and stops waiting the moment it is told to stop.

A kernel module: it imports nothing from the toolkit.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = [
    "Backoff",
    "cancel_and_wait",
    "delay_after",
    "pause",
    "raise_if_cancelled",
    "unless_stopped",
]

T = TypeVar("T")

_MAX_DOUBLINGS = 64
"""Past this many doublings every delay is capped anyway (and 2**n stays a float)."""


def delay_after(
    failures: int,
    first: float,
    maximum: float,
    *,
    jitter: float = 0.0,
    uniform: Callable[[], float] = random.random,
) -> float:
    """The delay after ``failures`` failures in a row (1 gives ``first``): doubled each
    time, capped at ``maximum``, then lengthened by up to ``jitter`` of itself (0.25: up
    to a quarter), so that many clients that failed together do not retry together.

    For loops whose count of failures lives elsewhere (a delivery's attempts in a table);
    a loop that keeps its own count uses :class:`Backoff`.
    """
    doublings = min(max(failures - 1, 0), _MAX_DOUBLINGS)
    delay = min(first * 2.0**doublings, maximum)
    if jitter:
        delay *= 1.0 + jitter * uniform()
    return delay


def raise_if_cancelled() -> None:
    """Raise CancelledError when the running task is being cancelled though nothing
    raised it. Python 3.11's ``asyncio.wait_for`` (nats-py's requests wait with it)
    returns a result that came at the moment its task was cancelled and drops the
    cancellation: a retry loop then went on for ever under a task its owner waited to end
    (an interrupted ``toolkit demo`` hung in 3 of 12 runs at load). Every wait between
    attempts and every read of a stream checks it."""
    if _cancelling():
        raise asyncio.CancelledError


def _cancelling() -> bool:
    """Whether the running task is being cancelled."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def pause(stop: asyncio.Event | None, seconds: float) -> bool:
    """Wait ``seconds``, or less if ``stop`` is set meanwhile; whether it is set."""
    raise_if_cancelled()
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    if not stop.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):  # (not wait_for: see raise_if_cancelled)
                await stop.wait()
    return stop.is_set()


async def first(*waits: Awaitable[Any]) -> None:
    """Wait until the first of ``waits`` is done (an event set, a sleep over); the rest
    are cancelled."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


async def unless_stopped(stop: asyncio.Event, work: Awaitable[T]) -> T | None:
    """``work``'s result, or None once ``stop`` is set first (``work`` is then cancelled).

    For reads with nothing to undo: a request to a server that went away waits its full
    timeout, and a process told to stop (SIGTERM to its whole group, the server
    included) should not wait it out."""
    task = asyncio.ensure_future(work)
    if stop.is_set() or _cancelling():
        task.cancel()  # (being cancelled: it unwinds, and the CancelledError is raised)
    else:
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if task.done():
            return task.result()
        task.cancel()
    with contextlib.suppress(Exception):
        await _unwound(task)  # let it unwind (a reader's finally blocks) before going on
    return None


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until it has unwound (its finally blocks ran). Its own
    CancelledError ends here; the caller's does not.

    ``with suppress(CancelledError): await task`` cannot tell the two apart: when the
    caller is cancelled while it waits (a worker killed as it stops a reader), the
    caller's cancellation is swallowed too and it goes on as if never cancelled."""
    task.cancel()
    await _unwound(task)


async def _unwound(task: asyncio.Future[Any]) -> None:
    """Wait for ``task``, cancelled by the caller: its CancelledError is swallowed unless
    the caller itself is being cancelled."""
    try:
        await task
    except asyncio.CancelledError:
        if _cancelling():
            raise


class Backoff:
    """Delays between the attempts of one retry loop.

    ``delay`` is how long the next :meth:`wait` waits (jitter included, drawn once, so a
    log line that quotes it before waiting tells the truth). Each wait doubles the next
    delay up to ``maximum``; :meth:`reset` after a success starts from ``first`` again,
    so a loop that ran well for an hour does not wait the maximum at its next hiccup.

    ::

        backoff = Backoff(first=0.25, maximum=5.0)
        while not stop.is_set():
            try:
                await attempt()
            except TransientError as exc:
                log.warning("%s; again in %.1fs", exc, backoff.delay)
                if await backoff.wait(stop):
                    break
            else:
                backoff.reset()
    """

    def __init__(
        self,
        first: float = 0.25,
        maximum: float = 5.0,
        *,
        jitter: float = 0.0,
        uniform: Callable[[], float] = random.random,
    ) -> None:
        if first <= 0 or maximum < first:
            raise ValueError(f"back-off needs 0 < first <= maximum, not {first}, {maximum}")
        if jitter < 0:
            raise ValueError(f"back-off jitter must not be negative, not {jitter}")
        self.first = first
        self.maximum = maximum
        self.jitter = jitter
        self._uniform = uniform
        self.failures = 0
        """Waits since the last success (or since the start)."""
        self.delay = self._draw()

    def _draw(self) -> float:
        return delay_after(
            self.failures + 1, self.first, self.maximum, jitter=self.jitter, uniform=self._uniform
        )

    def reset(self) -> None:
        """An attempt succeeded: the next failure waits ``first`` again."""
        if self.failures:
            self.failures = 0
            self.delay = self._draw()

    def advance(self) -> float:
        """Take the current delay (for a loop that waits by other means) and double the
        next one; returns the delay taken."""
        taken = self.delay
        self.failures += 1
        self.delay = self._draw()
        return taken

    async def wait(self, stop: asyncio.Event | None = None) -> bool:
        """Wait the current delay, or less if ``stop`` is set meanwhile (the loop then
        ends at once rather than after the delay); whether ``stop`` is set."""
        return await pause(stop, self.advance())
