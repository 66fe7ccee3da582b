"""A batch of a stream, translated for a projection before its store writes it.

The projector hands a batch of messages to :func:`apply_batch`, which says what each is
to the projection, against what its store has applied so far (:func:`translate_batch`),
and then has the store write the outcome in one transaction
(:meth:`~toolkit.read.store.ReadModelStore.write`). The store never translates: it
stores facts, dead letters, parkings and positions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from toolkit import wire
from toolkit.errors import ContractError, PoisonMessage
from toolkit.read.parking import Parking
from toolkit.read.projection import Projection
from toolkit.read.reader import StreamMessage
from toolkit.read.translator import Translator, UnknownEvent
from toolkit.wire.subjects import aggregate_token


@dataclass
class Counts:
    """What became of the messages of one or more batches."""

    applied: int = 0
    skipped: int = 0
    """Event types the projection does not read (tolerant reader)."""
    duplicates: int = 0
    """Messages at or below the checkpoint, or of a log position passed: already
    applied, not applied again."""
    dead_lettered: int = 0
    foreign: int = 0
    """Messages of other slices, passed over by a slice worker (sliced projections)."""
    untrusted: int = 0
    """Messages the stream's relay did not publish (another publisher's, or malformed):
    dead-lettered or skipped as the projection's ``on_untrusted`` says."""

    def count(self, other: Counts) -> None:
        """Count ``other``'s messages too."""
        self.applied += other.applied
        self.skipped += other.skipped
        self.duplicates += other.duplicates
        self.dead_lettered += other.dead_lettered
        self.foreign += other.foreign
        self.untrusted += other.untrusted


@dataclass
class BatchResult(Counts):
    """What became of one batch's messages."""


@dataclass
class TranslatedBatch:
    """What a batch means to a projection, ready for its store to write."""

    stream: str
    messages: Sequence[StreamMessage]
    since: int
    """The checkpoint it was translated against."""
    checkpoint: int
    """The checkpoint once it is written: its last message past ``since``."""
    position: int | None
    """The log position of its last relayed message (None before the first)."""
    facts: list[object] = field(default_factory=list)
    origins: list[tuple[int, int]] = field(default_factory=list)
    """(stream sequence, how many facts it gave) of each message translated."""
    dead: list[tuple[StreamMessage, str]] = field(default_factory=list)
    """Messages for the dead letters, with the reason."""
    parked: dict[str, int] = field(default_factory=dict)
    """Aggregates it parks, with the sequence of the dead letter they wait behind."""
    result: BatchResult = field(default_factory=BatchResult)


class Applied(Protocol):
    """What a batch is translated against: a store's view of what it has applied."""

    @property
    def projection(self) -> Projection: ...
    @property
    def parking(self) -> Parking: ...
    def checkpoint(self, stream: str) -> int: ...
    def position(self, stream: str) -> int | None: ...


class Store(Applied, Protocol):
    def write(self, batch: TranslatedBatch) -> BatchResult: ...


class HoldingStore(Applied, Protocol):
    def write(self, batch: TranslatedBatch, *, hold: bool = ...) -> BatchResult: ...


def apply_batch(
    store: Store, translator: Translator, messages: Sequence[StreamMessage]
) -> BatchResult:
    """Translate a batch and have ``store`` write it, with the checkpoint, in one
    transaction."""
    return store.write(translate_batch(translator, messages, store))


def apply_held(
    store: HoldingStore, translator: Translator, messages: Sequence[StreamMessage]
) -> BatchResult:
    """As :func:`apply_batch`, the store holding the transaction open for more batches
    (see :mod:`toolkit.read.store`)."""
    return store.write(translate_batch(translator, messages, store), hold=True)


def translate_batch(
    translator: Translator, messages: Sequence[StreamMessage], applied: Applied
) -> TranslatedBatch:
    """Say what each message is to the projection: already applied (at or below the
    checkpoint, or a log position passed), not the relay's, parked behind its
    aggregate's dead letter, of a type not read, unreadable (a dead letter, parking its
    aggregate when the projection parks aggregates), or facts.

    A translator that raises makes the message a :class:`~toolkit.errors.PoisonMessage`.
    """
    projection = applied.projection
    stream = translator.stream
    since = checkpoint = applied.checkpoint(stream)
    last_position = applied.position(stream)
    batch = TranslatedBatch(stream, messages, since, since, last_position)
    result, facts, origins, dead = batch.result, batch.facts, batch.origins, batch.dead
    parked: Mapping[str, int] = applied.parking.of(stream)
    newly_parked = batch.parked  # aggregate -> the sequence of this batch parking it
    park_aggregates = projection.on_poison == "park-aggregate"
    keep_untrusted = projection.on_untrusted == "dead-letter"
    passed_over = applied.parking.ahead
    relayed_head = wire.relayed_head
    for message in messages:
        sequence = message.sequence
        if sequence <= checkpoint:
            result.duplicates += 1
            continue
        checkpoint = sequence
        head = relayed_head(stream, message.msg_id, message.data)
        if isinstance(head, str):  # not the relay's: it moves nothing, parks nothing
            result.untrusted += 1
            if keep_untrusted:
                dead.append((message, f"not published by the {stream} relay: {head}"))
                result.dead_lettered += 1
            continue
        position = head.logposition
        assert position is not None  # relayed_head checked it
        if last_position is not None and position <= last_position:
            result.duplicates += 1  # published again after the stream lost it
            continue
        last_position = position
        if passed_over and (stream, sequence) in passed_over:
            result.dead_lettered += 1  # parked earlier: already in the dead letters
            continue
        token = None
        if parked or newly_parked:
            token = aggregate_token(message.subject)
            behind = parked.get(token, newly_parked.get(token))
            if behind is not None and sequence > behind:  # never the ones before it
                dead.append((message, f"parked behind {stream} sequence {behind}"))
                result.dead_lettered += 1
                continue
        try:
            translated = translator.translate(message, head)
        except UnknownEvent:
            result.skipped += 1
        except ContractError as exc:
            # A version this consumer cannot read yet, or a broken contract: the
            # aggregate's later messages wait behind it, as for a failing handler.
            dead.append((message, str(exc)))
            result.dead_lettered += 1
            if park_aggregates:
                newly_parked.setdefault(token or aggregate_token(message.subject), sequence)
        except Exception as exc:
            raise poison(projection, message, exc) from exc
        else:
            facts += translated
            origins.append((sequence, len(translated)))
            result.applied += 1
    batch.checkpoint, batch.position = checkpoint, last_position
    return batch


def poison(projection: Projection, message: StreamMessage, exc: Exception) -> PoisonMessage:
    """The error that names ``message`` as the one ``projection`` fails on."""
    return PoisonMessage(
        f"projection {projection.name} failed on {message.stream} at sequence "
        f"{message.sequence}: {type(exc).__name__}: {exc}",
        stream=message.stream,
        sequence=message.sequence,
        cause=exc,
    )
