"""Replay: rebuild a projection from a stream offset into a new generation of its read
model, beside the live one, then switch readers to it atomically."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nats.aio.client import Client

from toolkit.projection import Projection
from toolkit.projector import Projector, ProjectorStats
from toolkit.store import ProjectionHome, ReadModelStore


@dataclass
class ReplayResult:
    generation: Path
    previous: Path | None
    stats: ProjectorStats
    switched: bool


async def rebuild(
    projection: Projection,
    home: ProjectionHome,
    client: Client,
    *,
    switch: bool = True,
    keep_previous: bool = False,
    batch_size: int = 1000,
) -> ReplayResult:
    """Build a fresh generation from sequence 1 up to each stream's current head.

    With ``switch`` readers move to it atomically when it is complete and the previous
    generation is dropped (unless ``keep_previous``). The live projector must not run
    meanwhile: the home's writer lock is held throughout.
    """
    with home.writer_lock():
        previous = home.current()
        generation = home.new_generation()
        store = ReadModelStore(generation, projection)
        try:
            projector = Projector(
                projection, store, client, batch_size=batch_size, name=f"{projection.name}-replay"
            )
            stats = await projector.run(until_head=True)
        except BaseException:
            store.close()
            home.drop(generation)
            raise
        store.close()
        if not switch:
            return ReplayResult(generation, previous, stats, switched=False)
        home.switch_to(generation)
        if previous is not None and not keep_previous:
            home.drop(previous)
        return ReplayResult(generation, previous, stats, switched=True)
