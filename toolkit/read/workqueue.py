"""Work queues: competing consumers for work that is a queue, not a read model.

A projection keeps its own position and applies every event in order. Some work is a
queue instead: each event is a job that one of several workers should do once, in any
order, at the pace the workers can take (queue-based load levelling). A ``WorkQueue`` is
a durable JetStream consumer with explicit acknowledgements, owned by the consuming
context and shared by its workers: a job a worker does not acknowledge in time, because
it died or is stuck, goes to another; a job that keeps failing is given up after
``max_deliver`` tries and logged. Jobs should be idempotent (a redelivered job must not
be done twice): the example in ``projections/notifications`` keys its outbox by order.

Any number of workers, in any number of processes, share one queue. A worker fetches a
few jobs at once and does them one after the other; those waiting their turn are kept
(an in-progress acknowledgement every third of ``ack_wait``), so a batch that takes
longer than ``ack_wait`` is not handed to another worker meanwhile: only the jobs of a
worker that died, or of one whose job runs past ``ack_wait``, go to another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from toolkit import backoff, wire
from toolkit.nats.connection import Connection
from toolkit.read.reader import StreamMessage
from toolkit.wire import check_name

log = logging.getLogger(__name__)


@dataclass
class WorkStats:
    done: int = 0
    retried: int = 0
    given_up: int = 0
    untrusted: int = 0
    """Messages the stream's relay did not publish: acknowledged without being done."""


class WorkQueue:
    """A consumer-owned queue of jobs over a stream, for competing workers."""

    def __init__(
        self,
        client: Client | Connection,
        stream: str,
        name: str,
        *,
        subjects: list[str] | None = None,
        ack_wait: float = 30.0,
        max_deliver: int = 5,
        retry_delay: float = 1.0,
        relayed_only: bool = True,
    ) -> None:
        self.connection = Connection.of(client)
        """Each call takes its current client: one the server closed is replaced."""
        self.stream = check_name("stream", stream)
        self.name = check_name("queue", name)
        self.subjects = subjects
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver
        self.retry_delay = retry_delay
        self.relayed_only = relayed_only
        """Jobs are the stream relay's events (a context's stream): a message another
        client put there is never done, since its job could stand in for a real one (an
        idempotent job keyed by order would then skip the real order). False for a queue
        that others publish jobs into."""

    @property
    def js(self) -> JetStreamContext:
        return self.connection.js

    async def ensure(self) -> None:
        """Create the queue's durable consumer (it starts at the stream's beginning), or
        leave it as it is."""
        config = ConsumerConfig(
            durable_name=self.name,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_deliver=self.max_deliver,
            max_ack_pending=1000,
        )
        if self.subjects:
            config.filter_subjects = self.subjects
        await self.js.add_consumer(self.stream, config)

    async def work(
        self,
        do: Callable[[StreamMessage], Awaitable[None]],
        stop: asyncio.Event,
        *,
        batch: int = 10,
    ) -> WorkStats:
        """Take jobs and ``do`` them until ``stop`` is set: acknowledge what succeeds,
        hand back what fails (after ``retry_delay``), give up after ``max_deliver``."""
        stats = WorkStats()
        sub = await self.js.pull_subscribe_bind(durable=self.name, stream=self.stream)
        try:
            while not stop.is_set():
                try:
                    jobs = await sub.fetch(batch, timeout=0.25)
                except TimeoutError:  # nats-py raises its own and, at times, asyncio's
                    continue
                waiting = list(jobs)
                keeper = asyncio.create_task(self._keep(waiting))
                try:
                    await self._do_batch(jobs, waiting, do, stats)
                finally:
                    await backoff.cancel_and_wait(keeper)
        finally:
            await sub.unsubscribe()
        return stats

    async def _keep(self, waiting: list[Msg]) -> None:
        """Tell the server the fetched jobs not yet begun are still this worker's."""
        while waiting:
            await asyncio.sleep(self.ack_wait / 3)
            for job in list(waiting):
                with contextlib.suppress(nats.errors.Error):  # then it is redelivered
                    await job.in_progress()

    async def _do_batch(
        self,
        jobs: list[Msg],
        waiting: list[Msg],
        do: Callable[[StreamMessage], Awaitable[None]],
        stats: WorkStats,
    ) -> None:
        for job in jobs:
            waiting.remove(job)  # (its own ack_wait runs from its last keep: a stuck job moves)
            meta = job.metadata
            message = StreamMessage(
                self.stream, meta.sequence.stream, job.subject, job.headers or {}, job.data
            )
            if self.relayed_only and (why := self._not_relayed(message)):
                await job.term()
                stats.untrusted += 1
                log.warning(
                    "queue %s skipped %s sequence %d, not published by its relay: %s",
                    self.name, self.stream, message.sequence, why,
                )  # fmt: skip
                continue
            try:
                await do(message)
            except Exception as exc:
                if meta.num_delivered >= self.max_deliver:
                    await job.term()
                    stats.given_up += 1
                    log.error(
                        "queue %s gave up %s sequence %d after %d tries: %s",
                        self.name, self.stream, message.sequence, meta.num_delivered, exc,
                    )  # fmt: skip
                else:
                    await job.nak(delay=self.retry_delay)
                    stats.retried += 1
            else:
                await job.ack()
                stats.done += 1

    def _not_relayed(self, message: StreamMessage) -> str | None:
        """Why the stream's relay did not publish ``message`` (None: it did)."""
        found = wire.relayed_head(self.stream, message.headers.get(wire.MSG_ID), message.data)
        return found if isinstance(found, str) else None
