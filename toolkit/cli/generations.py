"""``toolkit generations``: list a projection's generations, switch readers to a kept one.

Needs no NATS: it reads and moves the home's pointer only (see
:mod:`toolkit.read.generations`)."""

from __future__ import annotations

import argparse

import orjson
from rich.console import Console
from rich.table import Table

from toolkit.config import Settings
from toolkit.read.generations import GenerationInfo, Generations, Switch, describe, use
from toolkit.readmodels import tables
from toolkit.readmodels.backends import open_home
from toolkit.system import System


def generations(settings: Settings, system: System, args: argparse.Namespace) -> None:
    """List (stdout: a table, or JSON), or with ``--use`` switch and say what changed."""
    projection = system.projection(args.projection)()  # an unknown name: one clear line
    home = open_home(settings, projection.name)
    try:
        if args.use is not None:
            done = use(home, projection, args.use, switch_partial=args.switch_partial)
            print(orjson.dumps(_switch_json(done)).decode() if args.json else _said(done))
            return
        found = describe(home)
    finally:
        home.close()
    if args.json:
        report = {
            "projection": found.projection,
            "live": found.live.generation.stem if found.live else None,
            "problem": found.problem,
            "generations": [g.as_json() for g in found.items],
        }
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    Console(soft_wrap=True).print(render(found))


def render(found: Generations) -> Table:
    table = Table(title=f"generations of {found.projection}")
    for column in ("generation", "state", "version", "checkpoints", "dead letters", "size"):
        table.add_column(column)
    table.add_column("built")
    for g in found.items:
        table.add_row(
            g.generation.stem,
            g.state,
            "" if g.version is None else f"v{g.version}",
            _checkpoints(g),
            str(g.dead_letters) if g.version is not None else "",
            _size(g.size),
            (g.built or "").replace("+00:00", "Z") or ("by projector" if g.version else ""),
        )
    notes = []
    if found.problem:
        notes.append(found.problem)
    elif not found.items:
        notes.append(f"{found.projection} has no read model yet")
    elif found.live is None:
        notes.append("readers use no generation")
    table.caption = "\n".join(notes)
    table.caption_justify = "left"
    return table


def _checkpoints(g: GenerationInfo) -> str:
    parts = []
    for key, sequence in g.checkpoints.items():
        start = g.partial_from.get(tables.stream_of(key))
        parts.append(f"{key} {sequence}" + (f" (partial: from {start})" if start else ""))
    return ", ".join(parts)


def _size(size: int | None) -> str:
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "KB", "MB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def _said(done: Switch) -> str:
    stem, name = done.generation.generation.stem, done.projection
    if not done.switched:
        return f"{name}: readers already use {stem}; nothing changed"
    checkpoints = ", ".join(f"{k} {n}" for k, n in done.generation.checkpoints.items())
    before = f" from {done.previous.stem}" if done.previous is not None else ""
    kept = f"; {done.previous.stem} is kept" if done.previous is not None else ""
    return (
        f"{name}: readers moved{before} to {stem} (checkpoints {checkpoints or 'none'}){kept}; "
        f"a running 'toolkit project {name}' follows and goes on from {stem}'s checkpoints"
    )


def _switch_json(done: Switch) -> dict[str, object]:
    return {
        "projection": done.projection,
        "generation": done.generation.generation.stem,
        "previous": done.previous.stem if done.previous is not None else None,
        "switched": done.switched,
        "checkpoints": done.generation.checkpoints,
    }
