"""Read-your-writes across contexts, without calling the writing context.

A command answers with a consistency token, ``<context>:<log position>``: the position of
the last event it published (``<context>:0`` when it published none, so there is nothing
to wait for). A read that carries the token waits, bounded, until the projection has
applied that position; the projection's checkpoint is a stream sequence, and the message
at that sequence names its log position (``Nats-Msg-Id``), which the relay writes in log
order, so "applied up to the checkpoint" means "applied up to its log position". The read
model also keeps the log position it has passed: a token at or below it is answered from
the model alone, without NATS.

A token that can never be satisfied is refused at once (400), not waited for: a context
the projection does not read (or a projection's name), or a position past the head of a
log this process holds.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from toolkit.errors import ToolkitError
from toolkit.nats import streams
from toolkit.readmodels import Connection, tables
from toolkit.write import wakes
from toolkit.write.context import BoundedContext

HEADER = "Consistency-Token"
T = TypeVar("T")
_TOKEN = re.compile(r"([A-Za-z][A-Za-z0-9_-]{0,63}):(0|[1-9][0-9]{0,18})")


class InvalidToken(ToolkitError):
    """A consistency token that is not ``<context>:<log position>``."""


class ConsistencyToken(NamedTuple):
    context: str
    position: int

    def __str__(self) -> str:
        return f"{self.context}:{self.position}"

    @classmethod
    def parse(cls, text: str) -> ConsistencyToken:
        match = _TOKEN.fullmatch(text.strip())
        if match is None:
            raise InvalidToken(
                f"consistency token {text[:40]!r} is not '<context>:<log position>', "
                "e.g. 'sales:1042'"
            )
        return cls(match[1], int(match[2]))


def token_for(context: BoundedContext[Any], recordings: Sequence[Any]) -> ConsistencyToken:
    """The token of a save: the log position of its last event that leaves the context
    (private events never reach a projection of another context, so none is waited for)."""
    return ConsistencyToken(context.name, context.published_language.last_published(recordings))


COMMAND_THREADS = 40
"""Commands run at once in a process at most (as many as FastAPI's thread pool runs)."""
_commands = ThreadPoolExecutor(COMMAND_THREADS, thread_name_prefix="toolkit-command")


async def run_command(
    context: BoundedContext[Any], command: Callable[..., T], *args: Any
) -> tuple[T, ConsistencyToken]:
    """``command(*args)``'s result and the token of what it saved in ``context``, run on
    a thread of the commands' pool (saves block), with the caller's context variables
    (the request's trace).

    For an ``async def`` endpoint: one hop to a thread and back, where a ``def`` endpoint
    returning a model costs FastAPI two (the endpoint, then the answer's validation) through
    anyio's thread pool, which costs more a hop."""

    postponed = wakes.Postponed()  # (the relay's: it runs once the answer is on its way)

    def run() -> tuple[T, ConsistencyToken]:
        with wakes.postponing(postponed), context.recordings() as saved:
            result = command(*args)
        return result, token_for(context, saved)

    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(_commands, contextvars.copy_context().run, run)
    finally:
        postponed.make()


def passed(db: Connection, stream: str) -> int | None:
    """The log position of ``stream`` the read model has passed (every slice has),
    None when it does not say (nothing relayed passed yet, or a model older than that)."""
    keys = [key for key, _ in tables.checkpoints(db) if tables.stream_of(key) == stream]
    positions = tables.positions(db)
    if not keys or any(key not in positions for key in keys):
        return None
    return min(positions[key] for key in keys)


@dataclass(frozen=True)
class Satisfiable:
    """What tokens a read model can ever satisfy: the contexts each projection reads,
    the other names a client could mistake for one, and the heads of the logs held here."""

    reads: Mapping[str, frozenset[str] | None]
    """The contexts (streams) each projection reads, by projection."""
    projections: frozenset[str] = frozenset()
    heads: Mapping[str, Callable[[], int]] = field(default_factory=dict)
    """The last log position of each context whose log this process holds."""

    def check(self, token: ConsistencyToken, projection: str) -> None:
        """Raise :class:`InvalidToken` with the reason when ``token`` can never be met."""
        reads = self.reads.get(projection)
        if reads is not None and token.context not in reads:
            known = ", ".join(sorted(reads)) or "none"
            if token.context in self.projections:
                why = f"{token.context} is a projection, not a context"
            else:
                why = f"{projection} does not read context {token.context}"
            raise InvalidToken(f"consistency token {token}: {why} (it reads: {known})")
        head = self.heads.get(token.context)
        if head is not None and token.position > (last := head()):
            raise InvalidToken(
                f"consistency token {token}: log position {token.position} is past the head "
                f"of {token.context}'s log ({last}); no command gave it"
            )


class Applied(NamedTuple):
    """How far a projection has got in one context's stream."""

    sequence: int
    position: int
    """Log position of the message at ``sequence`` (0 before the first)."""


@dataclass
class Consistency:
    """Waits until a projection has applied a token's position.

    ``checkpoint()`` reads the projection's checkpoint for a stream (the lowest of its
    slices'); the log position at a sequence is read from the stream once and kept.
    """

    js: JetStreamContext
    poll_interval: float = 0.005
    _positions: dict[tuple[str, int], int] = field(default_factory=dict)

    async def position_at(self, stream: str, sequence: int) -> int:
        if sequence <= 0:
            return 0
        cache = self._positions
        key = (stream, sequence)
        if key not in cache:
            try:
                message = await self.js.get_msg(stream, seq=sequence)
            except NotFoundError:  # removed by the stream's limits: the next checkpoint
                return 0  # decides; until then nothing is claimed
            relayed = streams.relayed(stream, message)  # another publisher's claims nothing
            position = 0 if isinstance(relayed, str) else relayed.position
            if len(cache) > 4096:
                cache.clear()
            cache[key] = position
        return cache[key]

    async def wait(
        self,
        token: ConsistencyToken,
        checkpoint: Callable[[str], int | None],
        within: float,
    ) -> tuple[bool, Applied]:
        """(whether the token's position is applied, how far the projection got),
        waiting at most ``within`` seconds. ``checkpoint(stream)`` is None when the
        projection does not read ``stream``."""
        deadline = time.monotonic() + within
        while True:
            sequence = checkpoint(token.context)
            if sequence is None:
                raise InvalidToken(f"this read model does not read context {token.context}")
            applied = Applied(sequence, await self.position_at(token.context, sequence))
            if applied.position >= token.position:
                return True, applied
            if time.monotonic() >= deadline:
                return False, applied
            await asyncio.sleep(self.poll_interval)
