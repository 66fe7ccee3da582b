"""The generations of a projection's read model as an operator sees them, and moving
readers back to one kept beside the live one.

A replay with ``--keep-previous`` (or from a later start) leaves generations beside the
one readers use. Listing them says which one readers use, how far each got in every
stream, and whether it can be used; switching to one moves the home's pointer, the same
atomic step a replay ends with. A live projector given the home (``toolkit project``)
sees the pointer move and goes on writing the generation readers now use, from that
generation's own checkpoints (see :meth:`toolkit.read.projector.Projector.run`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from toolkit.errors import ConfigurationError, MarkerError, ProjectionBusyError, ProjectionError
from toolkit.read.projection import Projection
from toolkit.read.replay import BUILT, PARTIAL, REPLACES, START
from toolkit.readmodels import Connection, Dialect, Generation, ReadModelHome, backends, tables

State = Literal["live", "kept", "building", "to drop", "unreadable"]
"""``live``: readers use it; ``kept``: beside the live one; ``building``: an unfinished
replay writes it; ``to drop``: a replay that replaced it was cut short before dropping it
(the next replay drops it); ``unreadable``: it has no toolkit tables (yet)."""


@dataclass
class GenerationInfo:
    """One generation of a read model, read without a lock (a snapshot of a moment)."""

    generation: Generation
    state: State
    version: int | None = None
    """The projection version that built it (None: unreadable)."""
    checkpoints: dict[str, int] = field(default_factory=dict)
    """The last sequence applied, by checkpoint key (``stream`` or ``stream#k``)."""
    partial_from: dict[str, int] = field(default_factory=dict)
    """Where a partial model starts in each stream it does not hold from 1 (empty: whole)."""
    dead_letters: int = 0
    size: int | None = None
    """Bytes on disk (the file and its WAL; the schema's tables and indexes)."""
    built: str | None = None
    """When the replay that built it finished (ISO 8601, UTC); None for a generation a
    live projector built, or one older than this record."""
    replay_start: str | None = None
    """What the replay that built it started from (None: built by a live projector)."""
    replaces: str | None = None
    """The generation a replay built it to replace, by name (dropped once it is live)."""

    @property
    def live(self) -> bool:
        return self.state == "live"

    def as_json(self) -> dict[str, Any]:
        return {
            "generation": self.generation.stem,
            "name": self.generation.name,
            "state": self.state,
            "live": self.live,
            "version": self.version,
            "checkpoints": self.checkpoints,
            "partial_from": self.partial_from or None,
            "dead_letters": self.dead_letters,
            "bytes": self.size,
            "built": self.built,
            "replay_start": self.replay_start,
        }


@dataclass
class Generations:
    """Every generation of one projection's read model, oldest first."""

    projection: str
    items: list[GenerationInfo]
    problem: str | None = None
    """Why the pointer readers follow cannot be read (then no generation is live)."""

    @property
    def live(self) -> GenerationInfo | None:
        return next((g for g in self.items if g.live), None)


@dataclass(frozen=True)
class Switch:
    """What :func:`use` did."""

    projection: str
    generation: GenerationInfo
    previous: Generation | None
    switched: bool
    """False when readers used that generation already (nothing changed)."""


def describe(home: ReadModelHome) -> Generations:
    """The generations of ``home`` with what each holds (readers are not disturbed:
    each is read through a connection of its own)."""
    problem = None
    try:
        current = home.current()
    except MarkerError as exc:
        current, problem = None, str(exc)
    try:
        building = home.building()
    except MarkerError:
        building = None  # a replay says so, and starts over
    replaced = None
    items: list[GenerationInfo] = []
    for generation in home.generations():
        if current is not None and generation.name == current.name:
            state: State = "live"
        elif building is not None and generation.name == building.name:
            state = "building"
        else:
            state = "kept"
        info = GenerationInfo(generation, state)
        _read(info)
        if info.live:
            replaced = info.replaces
        items.append(info)
    for info in items:
        if info.state == "kept" and info.generation.name == replaced:
            info.state = "to drop"
    return Generations(home.name, items, problem)


def _read(info: GenerationInfo) -> None:
    """Fill ``info`` from its generation; one that cannot be read is ``unreadable``."""
    try:
        db = backends.connect(info.generation, readonly=True)
    except Exception:  # dropped meanwhile, or a file that is not a database
        info.state = "unreadable" if info.state == "kept" else info.state
        return
    try:
        meta = tables.meta(db)
        info.version = int(meta["version"]) if "version" in meta else None
        info.checkpoints = dict(tables.checkpoints(db))
        info.partial_from = dict(_json(meta.get(PARTIAL)))
        info.dead_letters = tables.count_dead_letters(db)
        info.built = meta.get(BUILT)
        info.replay_start = meta.get(START)
        info.replaces = meta.get(REPLACES)
        info.size = _size(info.generation, db)
    except Exception:  # no toolkit tables: created and never written, or not a model
        if info.state == "kept":
            info.state = "unreadable"
    finally:
        db.close()


def _json(value: str | None) -> dict[str, int]:
    return {} if value is None else dict(orjson.loads(value))


def _size(generation: Generation, db: Connection) -> int:
    if isinstance(generation, Path):
        return sum(
            os.stat(p).st_size
            for p in (generation, generation.with_name(generation.name + "-wal"))
            if p.exists()
        )
    assert db.dialect is Dialect.POSTGRESQL
    row = db.execute(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'm')"
    ).fetchone()
    return int(row[0])


def find(generations: Generations, wanted: str) -> GenerationInfo:
    """The generation ``wanted`` names: its number (``2``, ``g2``, ``g000002``) or its
    full name (``g000002.sqlite``, ``shipping_g000002``)."""
    text = wanted.strip().removesuffix(".sqlite").removeprefix(f"{generations.projection}_")
    number = text.removeprefix("g")
    known = ", ".join(g.generation.stem for g in generations.items) or "none yet"
    if number.isdigit():
        for info in generations.items:
            if int(info.generation.stem.removeprefix("g")) == int(number):
                return info
    raise ConfigurationError(
        f"projection {generations.projection} has no generation {wanted!r} (there are: {known})"
    )


def use(
    home: ReadModelHome, projection: Projection, wanted: str, *, switch_partial: bool = False
) -> Switch:
    """Point readers at the kept generation ``wanted``, atomically, as a replay does
    when it ends. Refused, with nothing changed, while a replay or rewind of the
    projection runs, and for a generation that is being built, cannot be read, was
    built by another version of the projection, or is partial (unless
    ``switch_partial``)."""
    name = projection.name
    try:
        with home.writer_lock("replay"):  # a replay's own switch must not undo this one
            generations = describe(home)
            target = find(generations, wanted)
            if target.live:
                return Switch(name, target, target.generation, switched=False)
            _check(target, projection, switch_partial=switch_partial)
            live = generations.live
            home.switch_to(target.generation)
            target.state = "live"
            return Switch(name, target, live.generation if live else None, switched=True)
    except ProjectionBusyError:
        raise ProjectionBusyError(
            f"a replay or rewind of projection {name} is running: switch generations once "
            "it is done (nothing changed)"
        ) from None


def _check(target: GenerationInfo, projection: Projection, *, switch_partial: bool) -> None:
    stem, name = target.generation.stem, projection.name
    if target.state == "building":
        raise ProjectionError(
            f"{stem} is being built by a replay that has not finished: run 'toolkit replay "
            f"{name}' again to finish it (nothing changed)"
        )
    if target.state == "unreadable" or target.version is None:
        raise ProjectionError(
            f"{stem} holds no read model of projection {name} (its toolkit tables cannot be "
            "read): readers cannot use it (nothing changed)"
        )
    if target.version != projection.version:
        raise ProjectionError(
            f"{stem} was built by version {target.version} of projection {name} but the "
            f"code is version {projection.version}: its projector would refuse it; switch "
            f"with the code of version {target.version} deployed, or rebuild with 'toolkit "
            f"replay {name}' (nothing changed)"
        )
    if target.partial_from and not switch_partial:
        starts = ", ".join(f"{s} from sequence {n}" for s, n in target.partial_from.items())
        raise ProjectionError(
            f"{stem} is a partial model: it holds only the events of {starts} on; add "
            "--switch-partial to have readers use it anyway (nothing changed)"
        )
