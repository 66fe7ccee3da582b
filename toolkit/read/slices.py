"""Slices: any number of workers sharing one projection, each slice applied in order by
one worker at a time, the slices moving by themselves when workers come and go.

A projection that declares ``slices`` (:attr:`~toolkit.read.projection.Projection.slices`)
has its streams cut into that many slices by a key: the message's aggregate, or what
:meth:`~toolkit.read.projection.Projection.slice_key` takes from the translated fact.
Slice ``k`` holds the keys whose CRC-32 is ``k`` modulo the count (:func:`slice_of`),
and keeps its own checkpoint per stream in the read model (``<stream>#<k>``: the cut is
recorded once, from the sequence the model had reached, so a model one worker kept is
handed over as it is).

Workers share the slices by lease (:class:`~toolkit.nats.leases.LeaseGroup`). A worker
reads each stream once, from the lowest checkpoint of the slices it holds, and writes a
batch for all of them in one transaction. The lease is not what keeps two workers from
applying a message twice: each slice's checkpoint moves, in the batch's transaction,
only from where this worker last saw it (:meth:`SlicedStore.write_slices`), so a worker
that lost a lease without knowing it yet (cut off from NATS, paused) has its whole
transaction refused, and what the slice's new holder applied stays applied once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from toolkit import wire
from toolkit.errors import ConfigurationError
from toolkit.nats.connection import Connection
from toolkit.nats.leases import LeaseGroup
from toolkit.nats.slicing import Slicing
from toolkit.nats.streams import last_sequence
from toolkit.read.batches import BatchResult, TranslatedBatch, translate_batch
from toolkit.read.parking import Parking
from toolkit.read.projection import Projection
from toolkit.read.projector import Projector, ProjectorStats
from toolkit.read.reader import StreamMessage
from toolkit.read.store import ReadModelStore
from toolkit.read.translator import Translator
from toolkit.readmodels import Generation, tables
from toolkit.wire.subjects import aggregate_token

log = logging.getLogger(__name__)


def slice_of(key: str, slices: int) -> int:
    """The slice of a key (an aggregate's id token, or what the projection's
    ``slice_key`` gives): the same in every process and language (CRC-32 of the key,
    modulo the number of slices)."""
    return zlib.crc32(key.encode()) % slices


class SliceTaken(Exception):
    """A slice's checkpoint is no longer where this worker left it: another wrote it."""

    def __init__(self, slice_: int, key: str) -> None:
        super().__init__(f"slice {slice_}: checkpoint {key} was moved by another worker")
        self.slice = slice_


class _Reposition(Exception):
    """The slices held changed so that the stream must be read again from lower down."""


class _SliceView:
    """What one slice has applied, as :func:`~toolkit.read.batches.translate_batch` asks."""

    def __init__(self, store: SlicedStore, slice_: int) -> None:
        self._store, self._slice = store, slice_

    @property
    def projection(self) -> Projection:
        return self._store.projection

    @property
    def parking(self) -> Parking:
        return self._store.parking

    def checkpoint(self, stream: str) -> int:
        return self._store.slice_checkpoint(stream, self._slice)

    def position(self, stream: str) -> int | None:
        return self._store.slice_position(stream, self._slice)


class SlicedStore(ReadModelStore):
    """A read model cut into slices, opened by a worker that writes the slices it holds."""

    def __init__(self, generation: Generation, projection: Projection, slices: int) -> None:
        super().__init__(generation, projection)
        self.slices = slices
        self._held: dict[str, frozenset[int]] = {}

    def held_in(self, stream: str) -> frozenset[int]:
        """The slices this worker writes in ``stream`` now."""
        return self._held.get(stream, frozenset())

    def hold(self, stream: str, held: frozenset[int]) -> None:
        self._held[stream] = held

    def refresh(self, stream: str, slices: frozenset[int]) -> None:
        """Read again where ``slices`` are in ``stream`` (another worker moved them), and
        which aggregates are parked."""
        if not slices:
            return
        with self._writing:
            self._reconnect()
            for k in slices:
                key = tables.checkpoint_key(stream, k)
                found = tables.checkpoint(self.db, key)
                if found is not None:
                    self._checkpoints[key] = found
                position = tables.position(self.db, key)
                if position is not None:
                    self._positions[key] = position
            self.parking = Parking(self.db)

    def slice_checkpoint(self, stream: str, slice_: int) -> int:
        return self._checkpoints.get(tables.checkpoint_key(stream, slice_), 0)

    def slice_position(self, stream: str, slice_: int) -> int | None:
        return self._positions.get(tables.checkpoint_key(stream, slice_))

    def checkpoint(self, stream: str) -> int:
        """The lowest checkpoint of the slices held (where reading has to start)."""
        held = self.held_in(stream) or frozenset(range(self.slices))
        return min(self.slice_checkpoint(stream, k) for k in held)

    def lowest(self, stream: str) -> int:
        """The lowest checkpoint of any slice of ``stream`` in the database now (0 before
        the cut): how far every worker together has applied it."""
        with self._writing:
            self._reconnect()
            return tables.checkpoint_of(self.db, stream)

    def joined(self, stream: str) -> bool:
        return all(
            tables.checkpoint_key(stream, k) in self._checkpoints for k in range(self.slices)
        )

    def view(self, slice_: int) -> _SliceView:
        return _SliceView(self, slice_)

    def cut(self, stream: str, before: int) -> None:
        """Cut ``stream`` into the slices, once: from the one checkpoint the model has
        (handed over), else from ``before`` (where the projection joins it)."""
        with self._writing:
            self._reconnect()
        with self._writing, self._transaction("exclusive") as db:
            epochs = tables.epochs(db, stream)
            if not epochs:
                tables.join(db, tables.checkpoint_key(stream), before, None)
                tables.repartition(db, stream, self.slices, 0)
                epochs = tables.epochs(db, stream)
            if len(epochs) != 1 or epochs[0][1] != self.slices:
                cuts = ", then ".join(str(count) for _, count in epochs)  # (partition workers)
                raise ConfigurationError(
                    f"the read model {self.generation.name} of projection "
                    f"{self.projection.name} is cut into {cuts} parts on {stream}, "
                    f"not the {self.slices} slices the projection declares: rebuild it "
                    f"with 'toolkit replay {self.projection.name}'"
                )
            for k in range(self.slices):
                tables.join(db, tables.checkpoint_key(stream, k), epochs[0][0] - 1, None)
        self._checkpoints = dict(tables.checkpoints(self.db))
        self._positions = tables.positions(self.db)

    def write_slices(self, batches: Mapping[int, TranslatedBatch]) -> BatchResult:
        """Write the translated batches of several slices (of one stream) in one
        transaction. Each slice's checkpoint moves only from where this store last saw
        it; when another worker moved one, nothing is written and :class:`SliceTaken`
        names it."""
        total = BatchResult()
        with self._writing:
            self._reconnect()
            todo: dict[int, TranslatedBatch] = {}
            for k, batch in sorted(batches.items()):
                if batch.since != self.slice_checkpoint(batch.stream, k):
                    raise ValueError(f"slice {k}'s batch was translated at another checkpoint")
                total.count(batch.result)
                if batch.checkpoint != batch.since:
                    todo[k] = batch
            if not todo:
                return total
            try:
                with self._transaction() as db:
                    # The fences first, in slice order: the rows stay locked to the end.
                    for k, batch in todo.items():
                        key = tables.checkpoint_key(batch.stream, k)
                        if not tables.advance(db, key, batch.since, batch.checkpoint):
                            raise SliceTaken(k, key)
                    facts: list[object] = []
                    for batch in todo.values():
                        for message, reason in batch.dead:
                            self._dead_letter(message, reason)
                        for token, sequence in batch.parked.items():
                            tables.park(db, batch.stream, token, sequence)
                        facts += batch.facts
                    if facts:
                        self.projection.apply_batch(facts, db)
                    for k, batch in todo.items():
                        key = tables.checkpoint_key(batch.stream, k)
                        if batch.position is not None and batch.position != self._positions.get(
                            key
                        ):
                            tables.pass_position(db, key, batch.position)
            except SliceTaken:
                raise
            except Exception as exc:
                failure, cause = self._blame(_merged(list(todo.values())), exc)
                raise failure from cause
            for k, batch in todo.items():
                key = tables.checkpoint_key(batch.stream, k)
                self._checkpoints[key] = batch.checkpoint
                if batch.position is not None:
                    self._positions[key] = batch.position
                self.parking.parked(batch.stream, batch.parked)
        return total


def _merged(batches: Sequence[TranslatedBatch]) -> TranslatedBatch:
    """Several slices' batches as one, in the order they were applied (to blame one)."""
    first = batches[0]
    merged = TranslatedBatch(
        first.stream,
        sorted((m for b in batches for m in b.messages), key=lambda m: m.sequence),
        min(b.since for b in batches),
        max(b.checkpoint for b in batches),
        None,
    )
    for batch in batches:
        merged.facts += batch.facts
        merged.origins += batch.origins
    return merged


class SliceWorker(Projector):
    """One of any number of workers keeping a sliced projection: applies the slices its
    leases give it, in one transaction a batch, from each slice's own checkpoint."""

    store: SlicedStore
    holds_batches = False  # its batches fence slices: each committed at once

    def __init__(
        self,
        projection: Projection,
        store: SlicedStore,
        client: Any,
        leases: LeaseGroup,
        **options: Any,
    ) -> None:
        super().__init__(projection, store, client, **options)
        self.leases = leases
        self.slicing = Slicing(leases)
        self._by_fact = type(projection).slice_key is not Projection.slice_key
        self._delivered: dict[str, tuple[int, int]] = {}
        """Per stream: (the reader's first sequence, the last sequence it delivered)."""

    async def run(
        self,
        stop: asyncio.Event | None = None,
        *,
        until_head: bool = False,
        home: Any = None,
    ) -> ProjectorStats:
        """Hold leases and project what they give, until ``stop``; then give them back.
        With ``until_head``: up to the heads as they are now, for every slice: the slices
        held, and those of workers gone, as their leases come free."""
        stop = stop or asyncio.Event()
        project = super().run
        if not until_head:
            return await self.slicing.holding(stop, lambda: project(stop, home=home))
        targets: dict[str, int] = {}

        async def to_the_heads() -> ProjectorStats:
            for t in self.projection.translators:
                targets.setdefault(t.stream, await last_sequence(self.js, t.stream))
            return await project(stop, until_head=True, home=home)

        return await self.slicing.holding(
            stop,
            to_the_heads,
            done=lambda: all(self.store.lowest(s) >= target for s, target in targets.items()),
        )

    def _reopen(self, generation: Generation) -> ReadModelStore:
        return SlicedStore(generation, self.projection, self.store.slices)

    async def _join(self, stream: str) -> None:
        if not self.store.joined(stream):
            self.store.cut(stream, await self._start_before(stream))

    async def _follow(self, translator: Translator, stop: asyncio.Event, until_head: bool) -> None:
        """Follow one stream for the slices held (:meth:`Slicing.follow`)."""
        stream = translator.stream
        follow = super()._follow

        async def take() -> frozenset[int]:
            await self._join(stream)
            usable = self.slicing.usable()
            self.store.refresh(stream, usable - self.store.held_in(stream))
            self.store.hold(stream, usable)
            return usable

        def gain(usable: frozenset[int]) -> bool:
            """Drop the slices lost; take those gained in place unless one's checkpoint
            is behind what was read."""
            gained = usable - self.store.held_in(stream)
            self.store.refresh(stream, gained)
            read = self._read_up_to(stream)
            if any(self.store.slice_checkpoint(stream, k) < read for k in gained):
                return False
            self.store.hold(stream, usable)
            return True

        async def read(interrupt: asyncio.Event) -> bool:
            try:
                await follow(translator, interrupt, until_head)
            except _Reposition:
                return False
            return True

        await self.slicing.follow(stop, until_head, take=take, gain=gain, read=read)

    def _read_up_to(self, stream: str) -> int:
        """The last sequence the current reader delivered (before its first: one less)."""
        start = self.reading_from.get(stream, 1)
        began, delivered = self._delivered.get(stream, (start, start - 1))
        return delivered if began == start else start - 1

    async def _store_apply(
        self, translator: Translator, batch: list[StreamMessage], stop: asyncio.Event
    ) -> BatchResult | None:
        """Apply a batch for every slice held, in one transaction."""
        stream = translator.stream
        while True:
            held = self.store.held_in(stream) & self.slicing.usable()
            self.store.hold(stream, held)
            if not held:
                raise _Reposition
            groups = self._slices_of(translator, batch)
            end = batch[-1].sequence
            translated: dict[int, TranslatedBatch] = {}
            for k in held:
                part = translate_batch(translator, groups.get(k, ()), self.store.view(k))
                if end > part.checkpoint:
                    part.checkpoint = end  # its own messages end earlier: the slice is past
                translated[k] = part
            try:
                result = self.store.write_slices(translated)
            except SliceTaken as taken:
                log.warning("%s: %s; reading it again", self.name, taken)
                self.store.refresh(stream, frozenset({taken.slice}))
                continue
            result.foreign += sum(len(m) for k, m in groups.items() if k not in held)
            self._delivered[stream] = (self.reading_from.get(stream, 1), end)
            return result

    def _slices_of(
        self, translator: Translator, batch: Sequence[StreamMessage]
    ) -> dict[int, list[StreamMessage]]:
        """Each message's slice: by its aggregate, or by the key of its first fact when
        the projection says (a message not the relay's, or that gives no fact or fails
        to translate, goes by its aggregate: it is dead-lettered or skipped once)."""
        count = self.store.slices
        groups: dict[int, list[StreamMessage]] = {}
        for message in batch:
            key = aggregate_token(message.subject)
            if self._by_fact:
                key = self._fact_key(translator, message) or key
            groups.setdefault(slice_of(key, count), []).append(message)
        return groups

    def _fact_key(self, translator: Translator, message: StreamMessage) -> str | None:
        head = wire.relayed_head(translator.stream, message.headers.get(wire.MSG_ID), message.data)
        if isinstance(head, str):
            return None
        with contextlib.suppress(Exception):  # translated again, and blamed, when applied
            facts = translator.translate(message, head)
            if facts:
                return self.projection.slice_key(facts[0])
        return None


def lease_group(
    connection: Connection, projection: Projection, *, ttl: float, replicas: int = 1
) -> LeaseGroup:
    """The leases of a projection's slices (``projection.<name>``)."""
    assert projection.slices is not None
    return LeaseGroup(
        connection, f"projection.{projection.name}", projection.slices, ttl=ttl, replicas=replicas
    )
