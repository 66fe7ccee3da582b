"""``toolkit dlq``: a projection's or a policy's dead letters listed, shown, retried with
the code as it is now, or dropped; changing them takes the projection's writer lock, or
the policy's lock (:mod:`toolkit.react.lock`), so it is refused while it runs.

The name is looked up among the system's projections, then its policies (``--policy``
takes the policy's when a projection has the same name)."""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

import orjson

from toolkit.cli.console import read_model_home, say
from toolkit.config import Settings
from toolkit.errors import ConfigurationError, ToolkitError
from toolkit.read.deadletters import read_dead_letters, retry_dead_letters
from toolkit.read.projection import Projection
from toolkit.read.store import ReadModelStore
from toolkit.readmodels import ReadModelHome
from toolkit.redaction import redact_urls
from toolkit.system import System


def dlq(settings: Settings, system: System, args: argparse.Namespace) -> None:
    name = args.projection
    if args.policy or (name not in system.projections and name in system.policies):
        _policy_dead_letters(settings, system, args)
        return
    if name not in system.projections and system.policies:
        raise ConfigurationError(
            f"no projection or policy named {name!r} (projections: "
            f"{', '.join(sorted(system.projections)) or 'none'}; policies: "
            f"{', '.join(sorted(system.policies))})"
        )
    projection = system.projection(name)()
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
        _show(letter._asdict())
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


def _show(letter: dict[str, Any]) -> None:
    """Print one dead letter as JSON, its body as text (as it came, with any URL's
    credentials taken out, as everything the toolkit prints)."""
    shown = letter | {"body": letter["body"].decode(errors="replace")}
    print(redact_urls(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode()))


def _policy_dead_letters(settings: Settings, system: System, args: argparse.Namespace) -> None:
    """``toolkit dlq <action> <policy>``: its parked messages and rejections
    (:mod:`toolkit.react.deadletters`); retry and drop hold the policy's lock."""
    from toolkit.react.deadletters import PolicyDeadLetters, dead_letters_path
    from toolkit.react.lock import policy_lock
    from toolkit.react.retries import retry_dead_letters
    from toolkit.react.runner import PolicyRunner

    policy_class = system.policy(args.projection)
    context_class = system.policy_context(policy_class)
    policy = policy_class()
    streams = policy.streams
    stream = args.stream or (streams[0] if len(streams) == 1 else None)
    if args.stream is not None and args.stream not in streams:
        raise ConfigurationError(f"policy {policy.name} does not read stream {args.stream}")
    if args.seq is not None and stream is None:
        raise ConfigurationError(f"--stream is needed: {policy.name} reads {streams}")
    if args.action in ("show", "drop") and args.seq is None:
        raise ConfigurationError(f"dlq {args.action} needs --seq")
    path = dead_letters_path(settings.data_dir, policy.name)
    letters = []  # (no file: none, and nothing is created to say so)
    if path.exists():
        with PolicyDeadLetters(path) as dead_letters:
            letters = dead_letters.letters()
    chosen = [
        d for d in letters if args.seq is None or (d.stream, d.sequence) == (stream, args.seq)
    ]
    if args.seq is not None and not chosen:
        raise ConfigurationError(f"no dead letter of policy {policy.name} at {stream} "
                                 f"sequence {args.seq}")  # fmt: skip
    if args.action == "list":  # reading only: fine while the policy runs
        rows = [
            {"stream": d.stream, "sequence": d.sequence, "kind": d.kind, "subject": d.subject,
             "type": d.type, "reason": d.reason}
            for d in chosen
        ]  # fmt: skip
        if args.json:
            print(orjson.dumps(rows).decode())
        for row in [] if args.json else rows:
            print(f"{row['stream']} {row['sequence']} {row['subject']} {row['kind']}: "
                  f"{row['reason']}")  # fmt: skip
        if not rows and not args.json:
            where = f" at sequence {args.seq}" if args.seq is not None else ""
            say(f"{policy.name} has no dead letters{where}")
        return
    if args.action == "show":
        _show(chosen[0]._asdict())
        return
    if args.action == "retry" and args.seq is not None and chosen[0].kind == "rejected":
        raise ConfigurationError(
            f"{stream} sequence {args.seq} was rejected ({chosen[0].reason}): a rejection is "
            "not retried, drop it"
        )
    if not path.exists():  # it never kept one: no log opened, nothing created
        say(f"{policy.name} has no dead letters")
        return
    context = context_class(data_dir=settings.data_dir)
    with (
        contextlib.closing(context),
        policy_lock(context, policy.name, f"toolkit dlq {args.action} {policy.name}"),
        PolicyDeadLetters(path) as dead_letters,
    ):
        if args.action == "drop":
            dead_letters.settle(chosen[0].stream, chosen[0].sequence)
            say(f"dropped {stream} sequence {args.seq}")
            return
        only = {(d.stream, d.sequence) for d in chosen} if args.seq is not None else None
        done = retry_dead_letters(PolicyRunner(policy, context), dead_letters, only)
    for letter in done.rejected:
        say(f"{letter.stream} {letter.sequence}: rejected now: {letter.reason}")
    for letter in done.failed:
        say(f"{letter.stream} {letter.sequence}: still failing: {letter.reason}")
    say(
        f"retried {done.reacted} dead letters ({done.events} events), "
        f"{len(done.rejected)} rejected now, {len(done.failed)} still failing"
    )
    if done.failed:
        raise ToolkitError(f"{len(done.failed)} dead letters still fail")
