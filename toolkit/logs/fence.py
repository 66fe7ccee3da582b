"""Tracking records that move only from where their writer left them: the fence of a
policy cut into slices (:mod:`toolkit.react.slices`).

eventsourcing's tracking record of a name moves only forward: a position at or below the
one stored is refused. That keeps one reactor from causing a message's effects twice,
but not two: a worker that lost a slice without knowing it yet (paused, cut off from
NATS) could still store a batch reaching past what the slice's new holder stored,
covering messages the new holder reacted to already. A :class:`FencedTracking` names,
for each tracking record it moves, the position its writer last saw
(:attr:`Move.expected`); the log stores the transaction only if every record is still
there, so the stale worker's whole transaction is refused (an ``IntegrityError``, which
the context raises as :class:`~toolkit.errors.ConflictError`), events included.

The recorders that honour it (:func:`fences`): toolkit's SQLite and PostgreSQL process
recorders (the defaults of a context's log on those databases) and the JetStream log's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eventsourcing.persistence import IntegrityError, Tracking


@dataclass(frozen=True)
class Move:
    """One tracking record moved: ``name`` from ``expected`` (None: it has no record yet)
    to ``position``."""

    name: str
    expected: int | None
    position: int


@dataclass(frozen=True)
class FencedTracking(Tracking):
    """Tracking records moved together, each only from where its writer left it. As a
    :class:`Tracking` it is its first move (for code that reads one name and position)."""

    moves: tuple[Move, ...] = ()

    @classmethod
    def of(cls, moves: Sequence[Move]) -> FencedTracking:
        if not moves:
            raise ValueError("a fenced tracking record moves at least one name")
        for move in moves:
            if move.expected is not None and move.position <= move.expected:
                raise ValueError(
                    f"tracking {move.name} would move back: {move.expected} to {move.position}"
                )
        return cls(moves[0].name, moves[0].position, tuple(moves))


def fences(recorder: Any) -> bool:
    """Whether ``recorder`` stores a :class:`FencedTracking` as a fence (else it would
    store its first move as a plain tracking record, and fence nothing)."""
    return bool(getattr(recorder, "fences_tracking", False))


def refusal(move: Move, found: int | None) -> IntegrityError:
    """The error a recorder raises for a move that does not hold: its name, the position
    its writer expected and the one found (None: no record)."""
    expected = "no record" if move.expected is None else f"position {move.expected}"
    stored = "no record" if found is None else f"position {found}"
    return IntegrityError(
        f"tracking {move.name} is not where its writer left it: expected {expected}, "
        f"found {stored} (another writer moved it); nothing of this save is stored"
    )
