"""What a policy's runner asks of the policy's state beside the log (its file,
:class:`~toolkit.react.deadletters.PolicyDeadLetters`): which aggregates are parked, to
keep each aggregate's order (:class:`Holds`), and the last foreign log position reacted to
in each stream, to know events published again (:class:`Memory`). Protocols, so that the
runner runs without them (a test, ``toolkit.testing``) and the file depends on nothing of
the runner's."""

from __future__ import annotations

from typing import Protocol

from toolkit.read.reader import StreamMessage


class Holds(Protocol):
    """What the runner asks of the policy's dead letters to keep each aggregate's order
    (:class:`~toolkit.react.deadletters.PolicyDeadLetters`)."""

    def kept(self, stream: str, sequence: int) -> bool:
        """Whether the message at ``sequence`` is a dead letter already."""
        ...

    def holding(self, stream: str, aggregate: str) -> int | None:
        """The sequence of the dead letter ``aggregate`` is parked behind, if any."""
        ...

    def hold(self, message: StreamMessage, type_: str | None, root: int) -> None:
        """Keep ``message`` as a dead letter parked behind the one at ``root``."""
        ...


class Memory(Protocol):
    """Where a runner keeps, beside the log, the last foreign log position it reacted to
    in each stream (:class:`~toolkit.react.deadletters.PolicyDeadLetters`)."""

    def reacted_to(self) -> dict[str, int]:
        """The positions kept, by stream."""
        ...

    def remember(self, positions: dict[str, int]) -> None:
        """Keep these (a position never goes back)."""
        ...
