"""Replay: rebuild a projection from its streams into a new generation of its read
model, beside the live one, then switch readers to it atomically.

A replay from a later start (a stream sequence or a time) builds a *partial* model: it
holds only the events from there on. The generation records that (and from where), and
is kept beside the live one unless readers are explicitly switched to it.

A replay killed at any point leaves a state the next one goes on from: the home's
building marker names the generation being built until readers use it, and a
generation records the one it replaces, so that one is dropped by the next replay if
the process died before dropping it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from toolkit.errors import ConfigurationError, ProjectionError, ProjectionVersionError
from toolkit.nats.imports import jetstream
from toolkit.read.projection import Projection, StartPosition
from toolkit.read.projector import Projector, ProjectorStats
from toolkit.read.store import ReadModelStore
from toolkit.readmodels import Connection, Generation, ReadModelHome, tables

START = "replay_start"
"""Meta key: what the replay that built the generation was asked to start from."""
PARTIAL = "partial_from"
"""Meta key (JSON): the first sequence a partial model holds of each stream it does not
hold from sequence 1."""
REPLACES = "replaces"
"""Meta key: the generation dropped once readers use this one."""
BUILT = "built_at"
"""Meta key: when the replay that built the generation finished (ISO 8601, UTC), for
``toolkit generations``."""

Progress = Callable[[int, int], None]
"""Called with (events replayed, events to replay) as a replay goes."""


@dataclass
class ReplayResult:
    generation: Generation
    previous: Generation | None
    stats: ProjectorStats
    switched: bool
    resumed_from: int | None = None
    """The checkpoint an interrupted replay was resumed from (None for a fresh one)."""
    partial_from: dict[str, int] = field(default_factory=dict)
    """For a partial model, the first sequence it holds of each stream it does not hold
    from sequence 1 (empty for a whole model)."""
    dropped: bool = False
    """Whether ``previous`` was dropped."""


async def stream_heads(client: Client, projection: Projection) -> dict[str, int]:
    """The last sequence of each stream ``projection`` reads. A stream that does not
    exist is refused: a replay of it would give readers an empty model."""
    js = jetstream(client)  # a stream of another account through its import
    heads: dict[str, int] = {}
    for translator in projection.translators:
        try:
            info = await js.stream_info(translator.stream)
        except NotFoundError:
            raise ProjectionError(
                f"stream {translator.stream} does not exist on this NATS server, so "
                f"projection {projection.name} has nothing to replay (nothing changed; is "
                "this the server its context publishes to?)"
            ) from None
        heads[translator.stream] = int(info.state.last_seq)
    return heads


def partial_from(db: Connection) -> dict[str, int]:
    """Where a partial model starts in each stream (empty for a whole model)."""
    value = tables.read_meta(db, PARTIAL)
    return {} if value is None else dict(orjson.loads(value))


def _describe(start: StartPosition) -> str:
    if isinstance(start, datetime):
        return f"time {start.isoformat()}"
    return start if isinstance(start, str) else f"sequence {start}"


async def _run_reporting(
    projector: Projector, progress: Progress | None, begin: dict[str, int], end: dict[str, int]
) -> ProjectorStats:
    """Run to the head, calling ``progress`` about every 0.2 s with the events replayed
    out of those from ``begin`` (each stream's checkpoint now) to ``end``."""
    if progress is None:
        return await projector.run(until_head=True)
    total = sum(max(0, end[s] - begin[s]) for s in begin)

    def report() -> None:
        done = sum(
            max(0, min(projector.stats.checkpoints.get(s, begin[s]), end[s]) - begin[s])
            for s in begin
        )
        progress(done, total)

    running = asyncio.ensure_future(projector.run(until_head=True))
    while not running.done():
        await asyncio.wait([running], timeout=0.2)
        report()
    return running.result()


def _finish_interrupted(home: ReadModelHome) -> None:
    """Complete what a replay killed after switching readers left undone: clear its
    building marker, drop the generation it replaced."""
    current, building = home.current(), home.building()
    if current is not None and building is not None and building.name == current.name:
        home.mark_building(None)
    with home.reader() as db:
        replaced = None if db is None else tables.read_meta(db, REPLACES)
    if current is None or replaced in (None, current.name):
        return
    for generation in home.generations():
        if generation.name == replaced:
            home.drop(generation)


def _open_building(
    home: ReadModelHome, projection: Projection, start: str, to_sequence: int | None
) -> tuple[ReadModelStore, bool]:
    """The store of the generation to build and whether it resumes an interrupted
    replay: the one the building marker names when it was asked the same start and
    has not gone past ``to_sequence``, else a new one (the other is dropped)."""
    building = home.building()
    if building is not None and building.exists():
        try:
            store: ReadModelStore | None = ReadModelStore(building, projection)
        except ProjectionVersionError:  # built by another version of the code
            store = None
        if store is not None:
            streams = [t.stream for t in projection.translators]
            if tables.read_meta(store.db, START) == start and (
                to_sequence is None or all(store.checkpoint(s) <= to_sequence for s in streams)
            ):
                return store, True
            store.close()
        home.drop(building)
    generation = home.new_generation()
    home.mark_building(generation)
    return ReadModelStore(generation, projection), False


async def rebuild(
    projection: Projection,
    home: ReadModelHome,
    client: Client,
    *,
    switch: bool = True,
    switch_partial: bool = False,
    keep_previous: bool = False,
    batch_size: int = 1000,
    starts_at: StartPosition = "beginning",
    to_sequence: int | None = None,
    progress: Progress | None = None,
    locked: bool = False,
    exclusive: bool = False,
) -> ReplayResult:
    """Build a generation from ``starts_at`` up to each stream's current head (or
    ``to_sequence``), beside the one readers use.

    With ``switch`` readers move to the finished generation atomically and the previous
    one is dropped (unless ``keep_previous``). A partial model (from a start after
    sequence 1) records where it starts and is kept beside the live one: readers move to
    it only with ``switch_partial`` too.

    An interrupted replay (Ctrl-C, a crash, SIGKILL) leaves its generation named by the
    home's building marker; the next replay asked the same start goes on from that
    generation's checkpoint, any other starts over. A missing stream, or a start past a
    stream's head, is refused before anything changes.

    The live projector may keep running (one replay at a time is allowed): given its
    home, it moves to the new generation once readers do. With ``exclusive`` (a rewind)
    the projection must not be running at all; ``locked`` says the caller holds the
    projection's writer lock already.
    """
    heads = await stream_heads(client, projection)
    if isinstance(starts_at, int):
        for stream, head in heads.items():
            if starts_at > head + 1:
                raise ProjectionError(
                    f"cannot replay {projection.name} from sequence {starts_at}: stream "
                    f"{stream} ends at sequence {head} (nothing changed)"
                )
        if to_sequence is not None and to_sequence < starts_at:
            raise ConfigurationError(
                f"cannot replay {projection.name} from sequence {starts_at} to sequence "
                f"{to_sequence}: the end is before the start"
            )
    start = _describe(starts_at)
    with contextlib.ExitStack() as held:
        if exclusive and not locked:
            held.enter_context(home.writer_lock())
        held.enter_context(home.writer_lock("replay"))
        _finish_interrupted(home)
        previous = home.current()
        store, resumed = _open_building(home, projection, start, to_sequence)
        generation = store.generation
        streams = [t.stream for t in projection.translators]
        try:
            projector = Projector(
                projection,
                store,
                client,
                batch_size=batch_size,
                name=f"{projection.name}-replay",
                starts_at=starts_at,
                stop_at=to_sequence,
            )
            resumed_from = min(store.checkpoint(s) for s in streams) if resumed else None
            if not resumed:
                for stream in streams:
                    await projector._join(stream)  # where the projector would start
                later = {s: n for s in streams if (n := store.checkpoint(s) + 1) > 1}
                meta = {START: start}
                if later:
                    meta[PARTIAL] = orjson.dumps(later).decode()
                # With the join: a replay killed before is redone.
                tables.write_meta(store.db, meta)
            partial = partial_from(store.db)
            begin = {s: store.checkpoint(s) for s in streams}
            end = {
                s: heads[s] if to_sequence is None else min(heads[s], to_sequence) for s in heads
            }
            stats = await _run_reporting(projector, progress, begin, end)
            switching = switch and (not partial or switch_partial)
            dropping = switching and previous is not None and not keep_previous
            tables.write_meta(store.db, {BUILT: datetime.now(UTC).isoformat(timespec="seconds")})
            if dropping:
                assert previous is not None
                tables.write_meta(store.db, {REPLACES: previous.name})
            else:
                tables.forget_meta(store.db, REPLACES)
        finally:
            store.close()
        result = ReplayResult(generation, previous, stats, switching, resumed_from, partial)
        if switching:
            home.switch_to(generation)
        home.mark_building(None)
        if dropping and previous is not None:
            home.drop(previous)
            result.dropped = True
        return result


async def rewind(
    projection: Projection, home: ReadModelHome, client: Client, to_sequence: int
) -> ReplayResult:
    """Rebuild the read model as it was after ``to_sequence`` and switch readers to it;
    the projection goes on from ``to_sequence + 1`` when it next runs. Refused while it
    runs, and when ``to_sequence`` is past a stream's head (nothing changes)."""
    if to_sequence < 0:
        raise ConfigurationError(f"cannot rewind to sequence {to_sequence}: it is below 0")
    for stream, head in (await stream_heads(client, projection)).items():
        if to_sequence > head:
            raise ProjectionError(
                f"cannot rewind {projection.name} to sequence {to_sequence}: stream "
                f"{stream} ends at sequence {head} (nothing changed)"
            )
    return await rebuild(projection, home, client, to_sequence=to_sequence, exclusive=True)
