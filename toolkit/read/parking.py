"""Parking: keeping an aggregate's order when one of its messages cannot be applied.

A message that keeps failing (or cannot be read) goes to the dead letters and, when the
projection parks aggregates, holds its aggregate *parked*: every later message of that
aggregate goes to the dead letters behind it, until it is retried or dropped
(:mod:`toolkit.read.deadletters`). The checkpoint passes over all of them, so the
stream goes on for every other aggregate.

:class:`Parking` is what a store knows of it while it writes: which aggregates are
parked behind which dead letter, and which dead letters lie past the checkpoint (parked
while their batch was applied, so that batch skips them when it comes again). The rows
themselves are in the toolkit's tables (:mod:`toolkit.readmodels.tables`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from toolkit.readmodels import Connection, tables


class Parking:
    """The parked aggregates and dead letters ahead of the checkpoint of one read model
    generation, as its writer knows them."""

    def __init__(self, db: Connection) -> None:
        self._fill(tables.parked(db), tables.dead_letters_ahead(db))

    @classmethod
    def from_rows(
        cls, parked: Iterable[tuple[str, str, int]], ahead: Iterable[tuple[str, int]]
    ) -> Parking:
        """The same, from rows kept elsewhere: (stream, aggregate, sequence of the dead
        letter holding it) and (stream, sequence) of dead letters ahead (a policy's,
        :mod:`toolkit.react.deadletters`)."""
        parking = cls.__new__(cls)
        parking._fill(parked, ahead)
        return parking

    def _fill(
        self, parked: Iterable[tuple[str, str, int]], ahead: Iterable[tuple[str, int]]
    ) -> None:
        self._parked: dict[str, dict[str, int]] = {}
        for stream, aggregate, sequence in parked:
            self._parked.setdefault(stream, {})[aggregate] = sequence
        self.ahead: set[tuple[str, int]] = set(ahead)
        """(stream, sequence) of dead letters past their checkpoint: already dead letters
        when their batch comes again."""

    def of(self, stream: str) -> Mapping[str, int]:
        """The parked aggregates of ``stream``, each with the sequence of the dead
        letter that holds it."""
        return self._parked.get(stream, {})

    def holding(self, stream: str, aggregate: str) -> int | None:
        """The sequence of the dead letter ``aggregate`` is parked behind, if any."""
        return self._parked.get(stream, {}).get(aggregate)

    def parked(self, stream: str, aggregates: Mapping[str, int]) -> None:
        """Aggregates a batch parked (an aggregate parked already stays behind the
        dead letter it was)."""
        if aggregates:
            self._parked[stream] = {**aggregates, **self._parked.get(stream, {})}

    def parked_one(self, stream: str, sequence: int, aggregate: str | None) -> None:
        """A message put in the dead letters on its own, past the checkpoint, holding
        ``aggregate`` parked (None: only itself)."""
        self.ahead.add((stream, sequence))
        if aggregate is not None:
            self._parked.setdefault(stream, {}).setdefault(aggregate, sequence)

    def release(self, stream: str, sequence: int) -> None:
        """The dead letter at ``sequence`` is gone (applied or dropped): the aggregates
        it held are not parked any more."""
        parked = self._parked.get(stream, {})
        for aggregate, root in list(parked.items()):
            if root == sequence:
                del parked[aggregate]
        self.ahead.discard((stream, sequence))
