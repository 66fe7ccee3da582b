"""The reactor: follows the streams a policy reads over NATS, from its tracking records on,
and hands each batch to a :class:`~toolkit.react.runner.PolicyRunner`, as the projector
does for a projection.

Where it starts is the policy's tracking record of each stream in the context's log
(:meth:`PolicyRunner.position`), not a checkpoint of its own: the record is written in
the transaction of the effects, so a restart after any crash goes on from exactly what
was stored. A message whose reaction keeps failing (:class:`~toolkit.errors.PoisonMessage`)
is retried ``Policy.retries`` times with back-off, then parked with its aggregate: kept
as a dead letter (:mod:`toolkit.react.deadletters`) and recorded as processed, so the
policy moves on; the aggregate's later messages are parked behind it.
A log that fails (its database unreachable, locked) is no message's fault: that is
retried, with back-off, for as long as it lasts, and nothing is parked.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Generic

import nats.errors
from eventsourcing.persistence import InterfaceError, OperationalError
from nats.aio.client import Client
from nats.js.errors import NotFoundError
from typing_extensions import TypeVar

from toolkit import backoff, wire
from toolkit.errors import PoisonMessage
from toolkit.nats.connection import Connection, OnConnection
from toolkit.nats.streams import holds_between, last_sequence
from toolkit.react.deadletters import PolicyDeadLetters
from toolkit.react.runner import Counts, PolicyRunner, Rejection
from toolkit.read.reader import StreamMessage, StreamReader
from toolkit.write.context import BoundedContext

C = TypeVar("C", bound=BoundedContext[Any])
log = logging.getLogger(__name__)

_LOG_FAILURES = (OperationalError, InterfaceError)
"""Failures of the context's log itself: retried without end, never parked."""


@dataclass
class ReactorStats(Counts):
    retries: int = 0
    parked: int = 0
    """Messages whose reaction kept failing, kept as dead letters and passed over (with
    their aggregates: the messages parked behind them are counted in ``held``)."""
    failing: str | None = None
    """Why the reaction to a message fails while it is retried (None: nothing fails)."""
    positions: dict[str, int] = field(default_factory=dict)
    """The tracking record of each stream: its last sequence processed."""
    lag: dict[str, int] = field(default_factory=dict)
    """Messages in each stream after the position, as last reported by the server."""


class Reactor(OnConnection, Generic[C]):
    """Runs one policy on its context, following the streams it reads."""

    def __init__(
        self,
        runner: PolicyRunner[C],
        dead_letters: PolicyDeadLetters,
        client: Client | Connection,
        *,
        batch_size: int = 1000,
        threaded: bool = False,
    ) -> None:
        """``threaded``: react in a worker thread, leaving the event loop free (for a
        process that serves HTTP too)."""
        self.runner = runner
        self.policy = runner.policy
        self.dead_letters = dead_letters
        self.connection = Connection.of(client)
        self.batch_size = batch_size
        self.threaded = threaded
        self.stats = ReactorStats()
        if runner.on_rejected is None:
            runner.on_rejected = self._keep_rejection
        if runner.holds is None:
            runner.holds = dead_letters
        if runner.memory is None:
            runner.remember_with(dead_letters)

    def _keep_rejection(self, rejection: Rejection) -> None:
        message = rejection.message or StreamMessage(
            rejection.stream, rejection.sequence, rejection.subject, {}, b""
        )
        self.dead_letters.keep(message, "rejected", rejection.type, rejection.reason)

    async def run(
        self, stop: asyncio.Event | None = None, *, until_head: bool = False
    ) -> ReactorStats:
        """React until ``stop`` is set, or with ``until_head`` until every stream's head
        (its last message when called) is processed."""
        stop = stop or asyncio.Event()
        await asyncio.gather(*(self._follow(s, stop, until_head) for s in self.policy.streams))
        return self.stats

    async def _follow(self, stream: str, stop: asyncio.Event, until_head: bool) -> None:
        """Follow one stream; when the server goes away or stops answering, say so and
        go on from the tracking record once it answers."""
        waits = backoff.Backoff(0.25, 5.0)
        while not stop.is_set():
            reached = self.runner.position(stream)
            try:
                await self._follow_stream(stream, stop, until_head)
                return
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                self.stats.retries += 1
                if self.runner.position(stream) > reached:  # this attempt got on
                    waits.reset()
                log.warning(
                    "policy %s: reading stream %s failed (%s); going on from sequence %d in %.1fs",
                    self.policy.name, stream, str(exc) or type(exc).__name__,
                    self.runner.position(stream), waits.delay,
                )  # fmt: skip
                await waits.wait(stop)

    async def _follow_stream(self, stream: str, stop: asyncio.Event, until_head: bool) -> None:
        target = await last_sequence(self.js, stream) if until_head else None
        self.stats.positions[stream] = self.runner.position(stream)
        if target is not None and self.runner.position(stream) >= target:
            return
        said = False
        while not stop.is_set():
            try:
                reader = StreamReader(
                    self.client,
                    stream,
                    start_sequence=self.runner.position(stream) + 1,
                    batch_size=self.batch_size,
                    name=f"react-{self.policy.name}",
                )
                await reader.open()
                break
            except NotFoundError:
                if not said:
                    log.warning(
                        "policy %s: stream %s does not exist yet; waiting for its context",
                        self.policy.name, stream,
                    )  # fmt: skip
                    said = True
                await backoff.pause(stop, 1.0)
        else:
            return
        try:
            while not stop.is_set():
                batch = await backoff.unless_stopped(stop, reader.next_batch(max_wait=0.25))
                if batch is None:
                    return
                if batch and not await self._apply(batch, stop):
                    return  # stopped while waiting to retry
                if not batch:
                    self._quiet(stream)
                position = self.stats.positions[stream] = self.runner.position(stream)
                if reader.pending is not None:
                    self.stats.lag[stream] = reader.pending
                if target is not None and (
                    position >= target
                    or (bool(batch) and batch[-1].sequence >= target)
                    or (
                        not batch and not await holds_between(self.js, stream, position + 1, target)
                    )
                ):
                    return
        finally:
            await reader.close()

    def _quiet(self, stream: str) -> None:
        """Called when a read of ``stream`` brought nothing new."""

    async def _apply(self, batch: list[StreamMessage], stop: asyncio.Event) -> bool:
        """Apply ``batch``, retrying and parking what fails; False when stopped meanwhile."""
        tries: dict[int, int] = {}
        log_failures = 0
        while True:
            failure: Exception
            try:  # (after a failure, from the one that failed: not counted twice)
                stream = batch[0].stream
                position = self.runner.position(stream)
                todo = [m for m in batch if m.sequence > position]
                if self.threaded:
                    await asyncio.to_thread(self.runner.apply, todo, self.stats)
                else:
                    self.runner.apply(todo, self.stats)
                self.stats.failing = None
                return True
            except PoisonMessage as poison:
                failure = poison
                self.stats.failing = str(poison)
                if not isinstance(poison.cause, _LOG_FAILURES):
                    done = tries[poison.sequence] = tries.get(poison.sequence, 0) + 1
                    if done <= self.policy.retries:
                        delay = backoff.delay_after(done, self.policy.retry_delay, math.inf)
                        self.stats.retries += 1
                        log.warning("%s; retry %d in %.1fs", poison, done, delay)
                        if await backoff.pause(stop, delay):
                            return False
                        continue
                    message = next(m for m in batch if m.sequence == poison.sequence)
                    try:
                        self._park(message, poison, done)
                        continue
                    except _LOG_FAILURES as exc:
                        failure = exc
            except _LOG_FAILURES as exc:
                failure = exc
            log_failures += 1
            self.stats.failing = f"the log of context {self.runner.context.name} fails: {failure}"
            delay = backoff.delay_after(log_failures, self.policy.retry_delay, 5.0)
            self.stats.retries += 1
            log.warning(
                "policy %s: the log of context %s fails (%s); retrying in %.1fs",
                self.policy.name, self.runner.context.name, failure, delay,
            )  # fmt: skip
            if await backoff.pause(stop, delay):
                return False

    def _park(self, message: StreamMessage, poison: PoisonMessage, tries: int) -> None:
        """Keep ``message`` as a dead letter holding its aggregate parked, then record it
        as processed (in this order: a crash between finds it a dead letter already)."""
        cause = poison.cause
        reason = f"{type(cause).__name__}: {cause} (failed {tries} times)"
        head = wire.relayed_head(message.stream, message.headers.get(wire.MSG_ID), message.data)
        self.dead_letters.park(message, None if isinstance(head, str) else head.type, reason)
        if self.runner.pass_over(message):
            self.stats.parked += 1
        log.error(
            "%s; parked %s sequence %d in the dead letters of policy %s, with its aggregate",
            poison, message.stream, message.sequence, self.policy.name,
        )  # fmt: skip
