"""Partitions: N workers sharing one read model, each applying the aggregates it owns.

An aggregate belongs to partition ``crc32(aggregate id token) mod N`` (:func:`owner`),
the same in every process and language. The partitionings of a stream are recorded in
the read model (:func:`toolkit.readmodels.tables.repartition`), each from the sequence
it starts at: a worker applies each message with the partitioning in force at its
sequence (:func:`ownership`), and passes a new partitioning (a *barrier*) only once
every worker of the previous one has reached it, so each aggregate's order holds. Going
back to fewer workers, the shares of the retired partitions up to the barrier are
finished by the workers left (:meth:`Barrier.retired`).

These are the rules; :class:`~toolkit.read.projector.Projector` follows them.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from toolkit.read.reader import StreamMessage
from toolkit.wire.subjects import aggregate_token

Epochs = Sequence[tuple[int, int]]
"""(first sequence, partitions) of each partitioning of a stream, oldest first."""


def owner(aggregate: str, partitions: int) -> int:
    """The partition that owns an aggregate: the same in every process and language
    (CRC-32 of the subject token, modulo the number of partitions)."""
    return zlib.crc32(aggregate.encode()) % partitions


def ownership(epochs: Epochs, partition: int) -> Callable[[StreamMessage], bool]:
    """Whether ``partition`` owns a message's aggregate, under the partitioning in force
    at the message's sequence."""

    def owns(message: StreamMessage) -> bool:
        count = next(c for s, c in reversed(epochs) if s <= message.sequence)
        return owner(aggregate_token(message.subject), count) == partition

    return owns


def first_sequence(epochs: Epochs, partition: int) -> int:
    """Where ``partition`` first exists: the start of the first partitioning that has it."""
    return next(start for start, count in epochs if partition < count)


@dataclass(frozen=True)
class Barrier:
    """A repartitioning a worker has not passed yet."""

    start: int
    """The first sequence of the new partitioning."""
    previous: int
    """How many partitions the one before it has."""
    current: int
    """How many partitions it has."""

    def retired(self, partition: int) -> list[int]:
        """The partitions of the previous partitioning with no place in this one whose
        share, up to the barrier, ``partition`` finishes (partition K is finished by
        partition K mod N)."""
        return [k for k in range(self.current, self.previous) if k % self.current == partition]


def barrier(epochs: Epochs, checkpoint: int) -> Barrier | None:
    """The first repartitioning after ``checkpoint``, if any."""
    for i, (start, count) in enumerate(epochs):
        if i and start > checkpoint:
            return Barrier(start, epochs[i - 1][1], count)
    return None
