"""``toolkit replay`` and ``toolkit rewind``: rebuild a projection's read model from its
streams into a new generation, without taking reads down, with progress an operator sees."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import orjson
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from toolkit.cli.console import console, read_model_home, say
from toolkit.config import Settings
from toolkit.nats.connection import open_nats
from toolkit.read.projection import StartPosition
from toolkit.read.replay import rebuild
from toolkit.read.replay import rewind as rewind_to
from toolkit.readmodels import Generation
from toolkit.system import System


async def replay(settings: Settings, system: System, args: argparse.Namespace) -> None:
    name = args.projection
    projection = system.projection(name)()
    start: StartPosition = args.from_seq or args.from_time or "beginning"
    async with open_nats(settings, name=f"replay-{name}") as nats:
        started = time.monotonic()
        with (
            _ReplayProgress(name, quiet=args.json) as progress,
            read_model_home(settings, name) as home,
        ):
            result = await rebuild(
                projection,
                home,
                nats.client,
                switch_partial=args.switch_partial,
                keep_previous=args.keep_previous,
                starts_at=start,
                to_sequence=args.to_seq,
                progress=progress.update,
            )
    seconds = time.monotonic() - started
    previous = result.previous.name if result.previous is not None else None
    if args.json:
        report = {
            "projection": name,
            "generation": result.generation.name,
            "partial_from": result.partial_from or None,
            "switched": result.switched,
            "previous": previous,
            "previous_dropped": result.dropped,
            "applied": result.stats.applied,
            "skipped": result.stats.skipped,
            "dead_lettered": result.stats.dead_lettered,
            "checkpoints": result.stats.checkpoints,
            "resumed_from": result.resumed_from,
            "seconds": round(seconds, 3),
        }
        print(orjson.dumps(report).decode())
        return
    resumed = f" (resumed from sequence {result.resumed_from})" if result.resumed_from else ""
    partial = ", ".join(f"{s} from sequence {n}" for s, n in result.partial_from.items())
    say(
        f"replayed {name}: {result.stats.applied} applied into {result.generation.name}"
        f"{resumed}; checkpoints {result.stats.checkpoints}"
        + (f"; a partial model: it holds only the events of {partial} on" if partial else "")
    )
    if result.switched:
        left = "dropped" if result.dropped else "kept"
        say(
            "readers switched to it"
            + (f"; the previous generation {previous} is {left}" if previous else "")
        )
        return
    say(
        "readers go on using "
        + (previous or "no model (there is none yet)")
        + f"; it is kept beside: {where(result.generation)}; to have readers use a partial "
        "model, run the replay with --switch-partial"
    )


def where(generation: Generation) -> str:
    """How to look at a generation readers do not use."""
    if isinstance(generation, Path):
        return f"look at it with: sqlite3 -readonly {generation}"
    return f"look at it in schema {generation.name} (SET search_path TO {generation.name})"


class _ReplayProgress:
    """A bar on a terminal, a line every few seconds otherwise, nothing with --json."""

    def __init__(self, name: str, *, quiet: bool) -> None:
        self.name, self.quiet = name, quiet
        self.bar: Progress | None = None
        self.task: TaskID | None = None
        self.last_line = 0.0
        self.started = time.monotonic()

    def __enter__(self) -> _ReplayProgress:
        if not self.quiet and console.is_terminal:
            self.bar = Progress(
                TextColumn(f"replaying {self.name}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=console,
            )
            self.bar.start()
            self.task = self.bar.add_task("replay", total=None)
        return self

    def update(self, done: int, total: int) -> None:
        """``done`` of the ``total`` events this replay applies (from where it starts)."""
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, completed=done, total=total)
        elif not self.quiet and time.monotonic() - self.last_line >= 2.0:
            self.last_line = time.monotonic()
            rate = done / max(1e-9, self.last_line - self.started)
            say(f"replaying {self.name}: {done}/{total} events, {rate:,.0f}/s")

    def __exit__(self, *_: object) -> None:
        if self.bar is not None:
            self.bar.stop()


async def rewind(settings: Settings, system: System, name: str, to_seq: int) -> None:
    projection = system.projection(name)()
    async with open_nats(settings, name=f"rewind-{name}") as nats:
        with read_model_home(settings, name) as home:
            result = await rewind_to(projection, home, nats.client, to_seq)
    dropped = f" ({result.previous.name} dropped)" if result.previous is not None else ""
    say(
        f"rewound {name} to sequence {to_seq}: {result.stats.applied} applied into "
        f"{result.generation.name}; readers switched{dropped}; it goes on from {to_seq + 1} "
        "when it next runs"
    )
