"""Policies cut into slices: any number of ``toolkit react <policy>`` workers sharing one
policy, each slice reacted to in order by one worker at a time, the slices moving by
themselves when workers come and go.

A policy that declares ``slices`` (:attr:`~toolkit.react.policy.Policy.slices`) has its
streams cut into that many slices by the message's aggregate (the CRC-32 of its id token
modulo the count, :func:`~toolkit.read.slices.slice_of`, as a projection's), each with a
tracking record of its own in the context's log (``<policy>:<stream>#<k>``). A slice
with no record yet starts where the policy was when it was cut (its whole tracking
record): a policy that ran as one reactor is handed over as it is. The count is recorded
once (``<policy>:<stream>#slices``) and cannot change.

Workers share the slices by lease (:class:`~toolkit.nats.leases.LeaseGroup`, group
``policy.<name>``). A worker reads each stream once, from the lowest tracking record of
the slices it holds, and stores the reactions to a run of messages of several slices in
one transaction, moving each slice's tracking record. The lease is not what keeps two
workers from causing an effect twice: each record moves, in the transaction of the
effects, only from where this worker last saw it (:class:`~toolkit.logs.fence.FencedTracking`),
so a worker that lost a slice without knowing it yet (cut off from NATS, paused) has its
whole transaction refused, effects included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from toolkit.nats.connection import Connection
from toolkit.nats.leases import LeaseGroup
from toolkit.nats.slicing import Slicing
from toolkit.nats.streams import last_sequence
from toolkit.react.deadletters import PolicyDeadLetters
from toolkit.react.policy import Policy
from toolkit.react.reactor import _LOG_FAILURES, C, Reactor, ReactorStats
from toolkit.react.runner import PolicyRunner
from toolkit.read.reader import StreamMessage

log = logging.getLogger(__name__)

SETTLE_EVERY = 1.0
"""Seconds between two moves of a live worker's slices' records to what it has read
(:attr:`~toolkit.react.tracking.Tracks.settle_every`)."""


class SliceReactor(Reactor[C]):
    """One of any number of workers of a policy cut into slices: reacts to the messages
    of the slices its leases give it, from each slice's own tracking record."""

    def __init__(
        self,
        runner: PolicyRunner[C],
        dead_letters: PolicyDeadLetters,
        client: Any,
        leases: LeaseGroup,
        **options: Any,
    ) -> None:
        super().__init__(runner, dead_letters, client, **options)
        if runner.tracks.slices is None:
            raise ValueError(f"policy {runner.policy.name} is not cut into slices")
        self.leases = leases
        self.slicing = Slicing(leases)
        runner.tracks.hold(frozenset())
        self._read: dict[str, int] = {}
        """Per stream: the last sequence the current reader delivered (or before)."""

    async def run(
        self, stop: asyncio.Event | None = None, *, until_head: bool = False
    ) -> ReactorStats:
        """Hold leases and react to what they give, until ``stop``; with ``until_head``,
        until every slice (this worker's, and those of workers gone, as their leases come
        free) is processed up to each stream's head as it is now. Then give them back."""
        stop = stop or asyncio.Event()
        self.runner.tracks.settle_every = 0.0 if until_head else SETTLE_EVERY
        react = super().run
        if not until_head:
            return await self.slicing.holding(stop, lambda: react(stop))
        targets: dict[str, int] = {}

        async def to_the_heads() -> ReactorStats:
            for stream in self.policy.streams:
                targets.setdefault(stream, await last_sequence(self.js, stream))
            return await react(stop, until_head=True)

        return await self.slicing.holding(stop, to_the_heads, done=lambda: self._at(targets))

    def _at(self, targets: dict[str, int]) -> bool:
        """Whether every slice of every stream is processed up to its target, as the log
        says now (another worker's included)."""
        tracks = self.runner.tracks
        assert tracks.slices is not None
        everything = frozenset(range(tracks.slices))
        tracks.forget_slices(everything - tracks.held)
        return all(
            tracks.slice_position(stream, k) >= target
            for stream, target in targets.items()
            for k in everything
        )

    async def _follow(self, stream: str, stop: asyncio.Event, until_head: bool) -> None:
        """Follow one stream for the slices held (:meth:`Slicing.follow`)."""
        tracks = self.runner.tracks
        follow = super()._follow

        async def take() -> frozenset[int]:
            usable = self.slicing.usable()
            self._gained(usable - tracks.held)
            tracks.hold(usable)
            self._read[stream] = tracks.position(stream) if usable else 0
            return usable

        def gain(usable: frozenset[int]) -> bool:
            """Drop the slices lost; take those gained in place unless one's record is
            behind what was read."""
            gained = usable - tracks.held
            self._gained(gained)
            read = self._read.get(stream, 0)
            if any(tracks.slice_position(stream, k) < read for k in gained):
                return False
            tracks.hold(usable)
            return True

        async def read(interrupt: asyncio.Event) -> bool:
            await follow(stream, interrupt, until_head)
            return True

        await self.slicing.follow(stop, until_head, take=take, gain=gain, read=read)

    def _gained(self, slices: frozenset[int]) -> None:
        """Read what the slices' last worker left anew: their tracking records, and the
        aggregates it parked (the dead letters' file is the workers' of one host)."""
        if slices:
            self.runner.tracks.forget_slices(slices)
            self.dead_letters.refresh()

    def _quiet(self, stream: str) -> None:
        """Move the held slices' records up to what was read (see :data:`SETTLE_EVERY`)."""
        with contextlib.suppress(*_LOG_FAILURES):  # (tried again when next quiet)
            self.runner.tracks.settle_now()

    async def _apply(self, batch: list[StreamMessage], stop: asyncio.Event) -> bool:
        stream = batch[0].stream
        tracks = self.runner.tracks
        tracks.hold(tracks.held & self.slicing.usable())  # (a lease lapsed meanwhile)
        applied = await super()._apply(batch, stop)
        self._read[stream] = max(self._read.get(stream, 0), batch[-1].sequence)
        return applied


def policy_leases(
    connection: Connection, policy: Policy[Any], *, ttl: float, replicas: int = 1
) -> LeaseGroup:
    """The leases of a policy's slices (``policy.<name>``)."""
    assert policy.slices is not None
    return LeaseGroup(
        connection, f"policy.{policy.name}", policy.slices, ttl=ttl, replicas=replicas
    )
