"""The projector: reads each stream a projection consumes, from the checkpoint on, and
applies batches to its read model."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import dataclass, field
from datetime import datetime

import nats.errors
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from toolkit import backoff, tracing
from toolkit.errors import ConfigurationError
from toolkit.nats.connection import Connection, OnConnection
from toolkit.nats.streams import holds_between, last_message, last_sequence
from toolkit.read.batches import BatchResult, Counts, apply_batch, apply_held
from toolkit.read.projection import Projection, StartPosition
from toolkit.read.reader import StreamMessage, StreamReader
from toolkit.read.retries import apply_retrying
from toolkit.read.store import CommitLost, ReadModelStore
from toolkit.read.translator import Translator
from toolkit.readmodels import Generation, ReadModelHome
from toolkit.wire.envelope import traceparent_of

log = logging.getLogger(__name__)
_UNTRACED = contextlib.nullcontext()


@dataclass
class ProjectorStats(Counts):
    retries: int = 0
    parked: int = 0
    """Messages that kept failing and were put in the dead letters."""
    checkpoints: dict[str, int] = field(default_factory=dict)
    lag: dict[str, int] = field(default_factory=dict)
    """Messages in each stream after the checkpoint, as last reported by the server."""
    past_head: dict[str, int] = field(default_factory=dict)
    """Streams whose head is behind the checkpoint (they lost messages), with the head."""


class Projector(OnConnection):
    """Keeps one read model up to date with the streams its projection reads."""

    holds_batches: bool = True
    """Whether, catching up, its store holds batches in a transaction left open (see
    :mod:`toolkit.read.store`) rather than committing each."""

    def __init__(
        self,
        projection: Projection,
        store: ReadModelStore,
        client: Client | Connection,
        *,
        batch_size: int = 1000,
        transaction_size: int = 5000,
        name: str | None = None,
        starts_at: StartPosition | None = None,
        stop_at: int | None = None,
    ) -> None:
        self.projection = projection
        self.store = store
        self.connection = Connection.of(client)
        """Each attempt takes its current client: one the server closed is replaced."""
        self.batch_size = batch_size
        self.stop_at = stop_at
        """Apply nothing past this stream sequence (a replay ``--to-seq``)."""
        self.starts_at = projection.starts_at if starts_at is None else starts_at
        """Where to join a stream the first time (the projection's own choice unless
        overridden, as a replay does with ``"beginning"``)."""
        self.transaction_size = transaction_size
        """Events applied in one transaction at most while catching up."""
        self.name = name or projection.name
        self.stats = ProjectorStats()
        self.reading_from: dict[str, int] = {}
        """The sequence each stream's current reader started at."""

    async def head(self, stream: str) -> int:
        """The stream's last sequence (0 when it is empty or does not exist yet)."""
        try:
            info = await self.js.stream_info(stream)
        except NotFoundError:
            return 0
        return int(info.state.last_seq)

    async def run(
        self,
        stop: asyncio.Event | None = None,
        *,
        until_head: bool = False,
        home: ReadModelHome | None = None,
    ) -> ProjectorStats:
        """Project until ``stop`` is set, or with ``until_head`` until every stream's
        head (as it was when called) is applied.

        Given the projection's ``home``, a live projector follows a replay: when readers
        are switched to a rebuilt generation, it goes on writing that one, from its
        checkpoint, without a restart (a generation built by another version of the
        projection stops it with :class:`~toolkit.errors.ProjectionVersionError`). A
        slice worker goes on in it too, cutting it into slices (the rebuilt one has one
        checkpoint per stream)."""
        stop = stop or asyncio.Event()
        while True:
            switched, pause = asyncio.Event(), asyncio.Event()
            stopping = asyncio.ensure_future(stop.wait())  # stop also pauses the followers
            stopping.add_done_callback(functools.partial(_set, pause))
            watching = (
                asyncio.create_task(self._watch(home, switched, pause))
                if home is not None
                else None
            )
            try:
                await asyncio.gather(
                    *(self._follow(t, pause, until_head) for t in self.projection.translators)
                )
            finally:
                stopping.cancel()
                if watching is not None:
                    watching.cancel()
            if stop.is_set() or not switched.is_set():
                return self.stats
            assert home is not None
            current = home.current()
            assert current is not None
            # A replay switched readers: normal operation, not a warning.
            log.info("%s: readers moved to %s; projecting into it", self.name, current.name)
            self.store.close()
            self.store = self._reopen(current)

    def _reopen(self, generation: Generation) -> ReadModelStore:
        """The store of the generation readers moved to (a slice worker opens a sliced one)."""
        return ReadModelStore(generation, self.projection)

    async def _watch(
        self, home: ReadModelHome, switched: asyncio.Event, pause: asyncio.Event
    ) -> None:
        while not pause.is_set():
            current = home.current()
            if current is not None and current != self.store.generation:
                switched.set()
                pause.set()
                return
            await backoff.pause(pause, 0.25)

    async def _join(self, stream: str) -> None:
        """The first time, record where the projection joins the stream (its
        ``starts_at``), so that a restart goes on from there rather than choosing again.
        A model cut into slices is refused: its slices' checkpoints are where it is."""
        epochs = self.store.epochs(stream)
        if len(epochs) == 1:
            name, count = self.projection.name, epochs[0][1]
            raise ConfigurationError(
                f"the read model of projection {name} is cut into {count} slices on "
                f"{stream} (by slice workers or by the old partition workers): run "
                f"'toolkit project {name}' workers if the projection declares slices = "
                f"{count}, else rebuild it with 'toolkit replay {name}'"
            )
        if epochs:
            name, cuts = self.projection.name, ", then ".join(str(c) for _, c in epochs)
            raise ConfigurationError(
                f"the read model of projection {name} is cut into {cuts} parts on {stream} "
                f"by the old partition workers: rebuild it with 'toolkit replay {name}'"
            )
        if self.store.joined(stream):
            return
        self.store.join(stream, await self._start_before(stream))

    async def _start_before(self, stream: str) -> int:
        """The sequence after which the projection joins ``stream`` (its ``starts_at``)."""
        start = self.starts_at
        if start == "beginning":
            return 0
        if start == "new":
            return await self.head(stream)
        if isinstance(start, datetime):
            return await self._sequence_at(stream, start) - 1
        return max(0, int(start) - 1)

    async def _store_apply(
        self, translator: Translator, batch: list[StreamMessage], stop: asyncio.Event
    ) -> BatchResult | None:
        """Apply a batch (a slice worker applies it for the slices it holds)."""
        return apply_batch(self.store, translator, batch)

    async def _store_hold(
        self, translator: Translator, batch: list[StreamMessage], stop: asyncio.Event
    ) -> BatchResult | None:
        """Apply a batch, its transaction held open for the next ones."""
        return apply_held(self.store, translator, batch)

    async def _sequence_at(self, stream: str, moment: datetime) -> int:
        """The first sequence stored at or after ``moment`` (head + 1 when none is)."""
        try:
            sub = await self.js.pull_subscribe(
                f"{stream}.>",
                stream=stream,
                config=ConsumerConfig(
                    deliver_policy=DeliverPolicy.BY_START_TIME,
                    opt_start_time=moment,
                    ack_policy=AckPolicy.NONE,
                    inactive_threshold=10.0,
                ),
            )
        except NotFoundError:
            return 1
        try:
            first = await sub.fetch(1, timeout=1.0)
            return int(first[0].metadata.sequence.stream)
        except nats.errors.TimeoutError:
            return await self.head(stream) + 1
        finally:
            await sub.unsubscribe()

    async def _follow(self, translator: Translator, stop: asyncio.Event, until_head: bool) -> None:
        """Follow one stream. When the server goes away, stops answering, or a cluster
        elects a new leader, say so and go on from the checkpoint once it answers."""
        waits = backoff.Backoff(0.25, 5.0)
        reached = -1
        while not stop.is_set():
            try:
                reached = self.store.checkpoint(translator.stream)
                await self._follow_stream(translator, stop, until_head)
                return
            except (nats.errors.Error, TimeoutError, OSError, CommitLost) as exc:
                self.stats.retries += 1
                try:
                    checkpoint = self.store.checkpoint(translator.stream)
                except CommitLost:  # the read model cannot say yet: tried again
                    checkpoint = reached
                if checkpoint > reached:  # this attempt got on: a new trouble
                    waits.reset()
                log.warning(
                    "%s: reading stream %s failed (%s); going on from checkpoint %d in %.1fs",
                    self.name, translator.stream, str(exc) or type(exc).__name__,
                    checkpoint, waits.delay,
                )  # fmt: skip
                await waits.wait(stop)

    async def past_head(self, stream: str) -> int | None:
        """The stream's head when the checkpoint is past it (the stream lost messages:
        deleted and created again, its tail removed, or restored from an older state),
        else None."""
        checkpoint = self.store.checkpoint(stream)
        try:
            info = await self.js.stream_info(stream)
        except NotFoundError:
            return 0 if checkpoint else None
        head = int(info.state.last_seq)
        if checkpoint > head:
            return head
        if info.state.messages and checkpoint and head == checkpoint:
            last = await last_message(self.js, stream)  # the tail may be deleted
            if last is not None and last.seq is not None and last.seq < checkpoint:
                return int(last.seq)
        return None

    async def _wait_for_head(self, stream: str, stop: asyncio.Event) -> None:
        """Wait, saying so once, while the checkpoint is past the stream's head: the
        context's relay publishes what the stream lost again (the same events, known
        by their log positions, are not applied twice)."""
        said = False
        while not stop.is_set():
            head = await self.past_head(stream)
            if head is None:
                if said:
                    log.warning("%s: stream %s is past checkpoint again", self.name, stream)
                return
            if not said:
                log.warning(
                    "%s: checkpoint %d is past the head %d of stream %s: the stream lost "
                    "messages; waiting for its relay to publish them again",
                    self.name, self.store.checkpoint(stream), head, stream,
                )  # fmt: skip
                said = True
            self.stats.past_head[stream] = head
            await backoff.pause(stop, 1.0)
        self.stats.past_head.pop(stream, None)

    async def _follow_stream(
        self, translator: Translator, stop: asyncio.Event, until_head: bool
    ) -> None:
        stream = translator.stream
        await self._join(stream)
        # Up to the last message that exists: the stream's last sequence may name one
        # deleted since, which no reader ever delivers.
        target = await last_sequence(self.js, stream) if until_head else None
        if self.stop_at is not None:
            target = self.stop_at if target is None else min(target, self.stop_at)
        self.stats.checkpoints[stream] = self.store.checkpoint(stream)
        if target is not None and self.store.checkpoint(stream) >= target:
            return
        await self._wait_for_head(stream, stop)
        self.stats.past_head.pop(stream, None)
        while not stop.is_set():
            try:
                self.reading_from[stream] = self.store.checkpoint(stream) + 1
                reader = StreamReader(
                    self.client,
                    stream,
                    start_sequence=self.reading_from[stream],
                    batch_size=self.batch_size,
                    name=self.name,
                )
                await reader.open()
                break
            except NotFoundError:
                log.warning("stream %s does not exist yet; waiting for its context", stream)
                await backoff.pause(stop, 1.0)
        else:
            return
        idle_since = asyncio.get_running_loop().time()
        try:
            while not stop.is_set():
                # Reads end when told to stop: nothing to undo, and a server gone with
                # this process (the same SIGTERM) would hold them for a request's timeout.
                batch = await backoff.unless_stopped(stop, reader.next_batch(max_wait=0.25))
                if batch is None:
                    return
                # Catching up, gather a bigger transaction: a commit rewrites every page
                # it touched, so fewer, larger ones write far less. At the head, apply at once.
                while batch and reader.pending and len(batch) < self.transaction_size:
                    more = await backoff.unless_stopped(stop, reader.next_batch(max_wait=1.0))
                    if more is None:
                        return
                    if not more:
                        break
                    batch += more
                # Done once a message past the target came, or none is left up to it
                # (those in between were deleted): the checkpoint may stay below it.
                done = target is not None and bool(batch) and batch[-1].sequence >= target
                if batch and self.stop_at is not None and batch[-1].sequence > self.stop_at:
                    batch = [m for m in batch if m.sequence <= self.stop_at]
                if batch:
                    idle_since = asyncio.get_running_loop().time()
                    # More to read: the store may hold the transaction open for it.
                    hold = self.holds_batches and bool(reader.pending) and not done
                    result = await self._apply(translator, batch, stop, hold=hold)
                    if result is None:
                        return  # stopped while waiting to retry
                    self.stats.count(result)
                    if result.untrusted:
                        log.warning(
                            "%s: %d message(s) on stream %s up to sequence %d were not "
                            "published by its relay (%s)", self.name, result.untrusted, stream,
                            batch[-1].sequence, "dead-lettered"
                            if self.projection.on_untrusted == "dead-letter" else "skipped",
                        )  # fmt: skip
                else:
                    self.store.flush()  # nothing came: what is held is committed
                if not batch and asyncio.get_running_loop().time() - idle_since > 5.0:
                    idle_since = asyncio.get_running_loop().time()
                    if await self.past_head(stream) is not None:  # lost under a live reader
                        await self._wait_for_head(stream, stop)
                    elif await holds_between(
                        self.js, stream, reader.next_sequence, await last_sequence(self.js, stream)
                    ):
                        # Messages the reader has not delivered for 5 s: its consumer sits on
                        # a replica that stopped applying the stream (seen on a cluster after
                        # its leader restarted), and says nothing is pending. A new one is
                        # placed afresh.
                        raise TimeoutError(
                            f"the reader of {stream} delivered nothing for 5 s from sequence "
                            f"{reader.next_sequence} though the stream holds more"
                        )
                checkpoint = self.store.checkpoint(stream)
                self.stats.checkpoints[stream] = checkpoint
                if reader.pending is not None:
                    self.stats.lag[stream] = reader.pending
                if target is not None and (
                    done
                    or checkpoint >= target
                    or (
                        not batch
                        and not await holds_between(self.js, stream, checkpoint + 1, target)
                    )
                ):
                    return
        finally:
            await reader.close()
            self.store.flush()

    async def _apply(
        self,
        translator: Translator,
        batch: list[StreamMessage],
        stop: asyncio.Event,
        *,
        hold: bool = False,
    ) -> BatchResult | None:
        """Apply a batch; a message whose handling raises is retried with back-off, then
        parked (with its aggregate, if the projection says so) and the batch goes on
        (see :mod:`toolkit.read.retries`)."""
        with self._span(batch) if tracing.enabled() else _UNTRACED:
            return await apply_retrying(
                functools.partial(
                    self._store_hold if hold else self._store_apply, translator, batch, stop
                ),
                batch,
                projection=self.projection,
                store=self.store,
                tally=self.stats,
                stop=stop,
            )

    def _span(self, batch: list[StreamMessage]) -> contextlib.AbstractContextManager[object]:
        """With spans on, applying a batch is a span when one of its messages is traced:
        a child of the first one's traceparent, linked to the others'."""
        return tracing.batch_span(
            f"{self.name} apply",
            (traceparent_of(message.data) for message in batch),
            kind="consumer",
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": batch[0].stream,
                "messaging.batch.message_count": len(batch),
                "toolkit.projection": self.projection.name,
            },
        )


def _set(event: asyncio.Event, _: object) -> None:
    event.set()
