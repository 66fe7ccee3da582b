"""``toolkit dlq``: a projection's dead letters listed, shown, retried with the code as it
is now, or dropped; changing them takes the projection's writer lock."""

from __future__ import annotations

import argparse

import orjson

from toolkit.cli.console import read_model_home, say
from toolkit.config import Settings
from toolkit.errors import ConfigurationError, ToolkitError
from toolkit.read.deadletters import read_dead_letters, retry_dead_letters
from toolkit.read.projection import Projection
from toolkit.read.store import ReadModelStore
from toolkit.readmodels import ReadModelHome
from toolkit.system import System


def dlq(settings: Settings, system: System, args: argparse.Namespace) -> None:
    projection = system.projection(args.projection)()
    with read_model_home(settings, args.projection) as home:
        _dead_letters(home, projection, args)


def _dead_letters(home: ReadModelHome, projection: Projection, args: argparse.Namespace) -> None:
    streams = [t.stream for t in projection.translators]
    stream = args.stream or (streams[0] if len(streams) == 1 else None)
    if args.seq is not None and stream is None:
        raise ConfigurationError(f"--stream is needed: {args.projection} reads {streams}")
    if args.action in ("show", "drop") and args.seq is None:
        raise ConfigurationError(f"dlq {args.action} needs --seq")
    with home.reader() as db:
        if db is None:
            raise ConfigurationError(f"projection {args.projection} has no read model yet")
        letters = read_dead_letters(db)
    chosen = [
        d for d in letters if args.seq is None or (d.stream, d.sequence) == (stream, args.seq)
    ]
    if args.seq is not None and not chosen:
        raise ConfigurationError(f"no dead letter at {stream} sequence {args.seq}")
    if args.action == "list":  # reading only: fine while the projection runs
        rows = [
            {"stream": d.stream, "sequence": d.sequence, "subject": d.subject, "reason": d.reason}
            for d in chosen
        ]
        if args.json:
            print(orjson.dumps(rows).decode())
        for row in [] if args.json else rows:
            print(f"{row['stream']} {row['sequence']} {row['subject']}: {row['reason']}")
        if not rows and not args.json:  # (on stderr: stdout stays a list, empty)
            where = f" at sequence {args.seq}" if args.seq is not None else ""
            say(f"{projection.name} has no dead letters{where}")
        return
    if args.action == "show":
        (letter,) = chosen
        shown = letter._asdict() | {"body": letter.body.decode(errors="replace")}
        print(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())
        return
    current = home.current()
    assert current is not None
    with home.writer_lock():  # changing dead letters: not while the projection runs
        store = ReadModelStore(current, projection)
        try:
            if args.action == "drop":
                store.drop_dead_letter(chosen[0].stream, chosen[0].sequence)
                say(f"dropped {stream} sequence {args.seq}")
                return
            only = {(d.stream, d.sequence) for d in chosen}
            done, failed = retry_dead_letters(store, projection.translators, only)
            for letter in failed:
                say(f"{letter.stream} {letter.sequence}: still failing: {letter.reason}")
            say(f"retried {done} dead letters, {len(failed)} still failing")
            if failed:
                raise ToolkitError(f"{len(failed)} dead letters still fail")
        finally:
            store.close()
