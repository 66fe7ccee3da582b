"""Replay: rebuild a projection from a stream offset into a new generation of its read
model, beside the live one, then switch readers to it atomically."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from nats.aio.client import Client

from toolkit.projection import Projection, StartPosition
from toolkit.projector import Projector, ProjectorStats
from toolkit.readmodel import Generation, ReadModelHome
from toolkit.store import ReadModelStore


@dataclass
class ReplayResult:
    generation: Generation
    previous: Generation | None
    stats: ProjectorStats
    switched: bool
    resumed_from: int | None = None
    """The checkpoint an interrupted replay was resumed from (None for a fresh one)."""


async def _run_reporting(
    projector: Projector, progress: Callable[[ProjectorStats], None] | None
) -> ProjectorStats:
    """Run to the head, calling ``progress`` with the stats about every 0.2 s."""
    if progress is None:
        return await projector.run(until_head=True)
    running = asyncio.ensure_future(projector.run(until_head=True))
    while not running.done():
        await asyncio.wait([running], timeout=0.2)
        progress(projector.stats)
    return running.result()


async def rebuild(
    projection: Projection,
    home: ReadModelHome,
    client: Client,
    *,
    switch: bool = True,
    keep_previous: bool = False,
    batch_size: int = 1000,
    starts_at: StartPosition = "beginning",
    to_sequence: int | None = None,
    progress: Callable[[ProjectorStats], None] | None = None,
    locked: bool = False,
    exclusive: bool = False,
) -> ReplayResult:
    """Build a generation from sequence 1 up to each stream's current head, beside the
    one readers use.

    An interrupted replay (Ctrl-C, a crash, SIGKILL) leaves its generation named in the
    home's ``BUILDING`` file; the next replay goes on from that generation's checkpoint
    instead of starting over. With ``switch`` readers move to the finished generation
    atomically and the previous one is dropped (unless ``keep_previous``).

    The live projector may keep running (one replay at a time is allowed): given its
    home, it moves to the new generation once readers do. With ``exclusive`` (a rewind)
    the projection must not be running at all.
    """
    lock = home.writer_lock() if exclusive else home.writer_lock("replay")
    with contextlib.nullcontext() if locked else lock:
        previous = home.current()
        generation = home.building()
        resumed_from: int | None = None
        if generation is None or not generation.exists():
            generation = home.new_generation()
            home.mark_building(generation)
        store = ReadModelStore(generation, projection)
        try:
            if any(store.joined(t.stream) for t in projection.translators):
                resumed_from = min(store.checkpoint(t.stream) for t in projection.translators)
            projector = Projector(
                projection,
                store,
                client,
                batch_size=batch_size,
                name=f"{projection.name}-replay",
                starts_at=starts_at,
                stop_at=to_sequence,
            )
            stats = await _run_reporting(projector, progress)
        finally:
            store.close()
        home.mark_building(None)
        if not switch:
            return ReplayResult(generation, previous, stats, False, resumed_from)
        home.switch_to(generation)
        if previous is not None and previous != generation and not keep_previous:
            home.drop(previous)
        return ReplayResult(generation, previous, stats, True, resumed_from)
