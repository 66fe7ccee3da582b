"""What every worker of slices does with its leases, projection or policy alike: hold them
while it works, hear when the slices held change, and follow a stream for the slices
it holds, reading it again from lower down when a slice comes whose position is behind
what was read (:mod:`toolkit.read.slices`, :mod:`toolkit.react.slices`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from toolkit import backoff
from toolkit.nats.leases import LeaseGroup

T = TypeVar("T")


class Slicing:
    """A worker's leases (:class:`~toolkit.nats.leases.LeaseGroup`), seen as the slices
    it may work on now and the changes of those."""

    def __init__(self, leases: LeaseGroup) -> None:
        self.leases = leases
        self._changes: list[asyncio.Event] = []

    def usable(self) -> frozenset[int]:
        """The slices held, renewed recently enough to count on."""
        return frozenset(k for k in self.leases.held if self.leases.holds(k))

    @contextlib.contextmanager
    def change(self) -> Iterator[asyncio.Event]:
        """An event set whenever the slices held change, while the block runs."""
        change = asyncio.Event()
        self._changes.append(change)
        try:
            yield change
        finally:
            self._changes.remove(change)

    async def holding(
        self,
        stop: asyncio.Event,
        work: Callable[[], Awaitable[T]],
        *,
        done: Callable[[], bool] | None = None,
    ) -> T:
        """Hold leases while ``work`` runs, until ``stop``; then give them back. With
        ``done``, run ``work`` again (as the slices of workers gone come free, and at
        least every third of a lease) until ``done()`` says every slice is through."""
        holding = asyncio.Event()
        leases = asyncio.create_task(self.leases.run(holding))
        relaying = asyncio.create_task(self._relay_changes(holding))
        try:
            await backoff.first(self.leases.ready.wait(), stop.wait())
            while True:
                result = await work()
                if done is None or stop.is_set() or done():
                    return result
                with self.change() as change:
                    await backoff.first(
                        change.wait(), stop.wait(), asyncio.sleep(self.leases.ttl / 3)
                    )
        finally:
            holding.set()
            relaying.cancel()
            await leases

    async def _relay_changes(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.leases.changed.wait()
            self.leases.changed.clear()
            for change in self._changes:
                change.set()

    async def follow(
        self,
        stop: asyncio.Event,
        until_head: bool,
        *,
        take: Callable[[], Awaitable[frozenset[int]]],
        gain: Callable[[frozenset[int]], bool],
        read: Callable[[asyncio.Event], Awaitable[bool]],
    ) -> None:
        """Follow one stream for the slices held: ``take()`` makes the usable slices the
        ones worked on (and says which); ``read(interrupt)`` reads the stream for them
        until at its head (``until_head``) or ``interrupt`` (False: read it again);
        when the slices change meanwhile, ``gain(usable)`` takes them in place (True),
        or says the stream must be read again from lower down (False). With none held,
        wait for some (or, ``until_head``, return)."""
        with self.change() as change:
            while not stop.is_set():
                if not await take():
                    if until_head:
                        return
                    await backoff.first(change.wait(), stop.wait())
                    change.clear()
                    continue
                interrupt = asyncio.Event()
                watching = asyncio.create_task(self._watch(change, stop, interrupt, gain))
                try:
                    if not await read(interrupt):
                        continue
                finally:
                    watching.cancel()
                if not interrupt.is_set():
                    return  # at the head (until_head)

    async def _watch(
        self,
        change: asyncio.Event,
        stop: asyncio.Event,
        interrupt: asyncio.Event,
        gain: Callable[[frozenset[int]], bool],
    ) -> None:
        while True:
            await backoff.first(change.wait(), stop.wait())
            if stop.is_set():
                interrupt.set()
                return
            change.clear()
            if not gain(self.usable()):
                interrupt.set()
                return
