"""The ``toolkit`` commands: run a context's relay and projections, replay, serve, demo.

Exit codes: 0 success; 1 a toolkit error (one line on stderr says why); 2 bad usage;
130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from toolkit.config import Settings, read_model_url
from toolkit.errors import (
    ConfigurationError,
    ProjectionVersionError,
    RelayBusyError,
    ToolkitError,
)
from toolkit.nats.connection import open_nats
from toolkit.nats.embedded import stop_keeping
from toolkit.nats.streams import StreamSpec
from toolkit.ops.reports import Reporter
from toolkit.read.deadletters import read_dead_letters, retry_dead_letters
from toolkit.read.projection import Projection, StartPosition
from toolkit.read.projector import Projector
from toolkit.read.replay import rebuild, rewind
from toolkit.read.store import ReadModelStore
from toolkit.readmodels import Generation, ReadModelHome
from toolkit.readmodels.backends import open_home
from toolkit.redaction import RedactingFilter, redact_urls
from toolkit.system import System, load_system
from toolkit.write.relay import Relay
from toolkit.write.relay_lock import relay_lock

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

console = Console(stderr=True, highlight=False, soft_wrap=True)  # one message, one line


def say(line: str) -> None:
    """Print one line for the operator, without the credentials of any URL in it: every
    line a command prints goes through here (or through logging, redacted alike)."""
    console.print(redact_urls(line))


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    if args.nats_url:
        settings = replace(settings, nats_url=args.nats_url)
    if args.data_dir:
        settings = replace(settings, data_dir=args.data_dir)
    if args.system:
        settings = replace(settings, system=args.system)
    if args.app_dir:
        settings = replace(settings, app_dir=args.app_dir)
    if args.read_model_url:
        url = read_model_url(args.read_model_url, "--read-model-url")
        settings = replace(settings, read_model_url=url)
    return settings


@contextlib.contextmanager
def _home(settings: Settings, name: str) -> Iterator[ReadModelHome]:
    home = open_home(settings, name)
    try:
        yield home
    finally:
        home.close()


async def _until_signalled(run: Callable[[asyncio.Event], Awaitable[Any]]) -> Any:
    """Run with a stop event that SIGINT and SIGTERM set, for a clean shutdown."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stopping() -> None:
        stop_keeping()  # the embedded server, stopped by the same signal, stays stopped
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping)
    try:
        return await run(stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _relay(settings: Settings, system: System, name: str, once: bool) -> None:
    context = system.context(name)(data_dir=settings.data_dir)
    with contextlib.closing(context), relay_lock(context, f"toolkit relay {name}"):
        async with (
            open_nats(settings, name=f"relay-{name}") as nats,
            Reporter(settings.data_dir) as reporter,
        ):
            relay = Relay(context, nats.connection, stream=StreamSpec.from_settings(name, settings))
            reporter.watch(
                f"relay.{name}",
                f"relay {name}",
                name=name,
                nats=lambda: nats.connection.trouble,
                position=lambda: relay.stats.position,
                backlog=relay.lag,
            )
            say(f"relaying {name} log onto stream {relay.stream.name} at {nats.url}")
            stats = await _until_signalled(lambda stop: relay.run(stop, until_head=once))
            say(
                f"relayed to log position {stats.position}: {stats.published} published "
                f"(stream sequence {stats.stream_sequence})"
            )


async def _project(
    settings: Settings,
    system: System,
    name: str,
    once: bool,
    partition: int | None = None,
    partitions: int | None = None,
    rebuild_if_stale: bool = False,
) -> None:
    if (partition is None) != (partitions is None):
        raise ConfigurationError("--partition and --partitions go together")
    if partition is not None and partitions is not None and not 0 <= partition < partitions:
        raise ConfigurationError(f"--partition {partition} must be from 0 to {partitions - 1}")
    projection = system.projection(name)()
    with _home(settings, name) as home, home.writer_lock(partition):
        async with open_nats(settings, name=f"project-{name}") as nats:
            try:
                store = ReadModelStore(home.live(), projection, partition=partition)
            except ProjectionVersionError:
                if not rebuild_if_stale or partition is not None:
                    raise
                say(f"rebuilding {name}: its read model is of another version")
                await rebuild(projection, home, nats.client, locked=True)
                store = ReadModelStore(home.live(), projection, partition=partition)
            projector = Projector(projection, store, nats.connection, partitions=partitions)
            worker = (
                ("", "") if partition is None else (f".p{partition}", f" partition {partition}")
            )
            try:
                say(f"projecting {name} into {store.generation} from {nats.url}")
                async with Reporter(settings.data_dir) as reporter:
                    reporter.watch(
                        f"projection.{name}{worker[0]}",
                        f"projection {name}{worker[1]}",
                        name=name,
                        nats=lambda: nats.connection.trouble,
                        position=lambda: sum(projector.stats.checkpoints.values()),
                        backlog=lambda: sum(projector.stats.lag.values()),
                    )
                    stats = await _until_signalled(
                        lambda stop: projector.run(stop, until_head=once, home=home)
                    )
                say(
                    f"{name}: {stats.applied} applied, {stats.skipped} skipped, "
                    f"{stats.dead_lettered} dead-lettered; checkpoints {stats.checkpoints}"
                )
            finally:
                projector.store.close()  # the one it ended in, after following a replay
                store.close()


async def _replay(settings: Settings, system: System, args: argparse.Namespace) -> None:
    name = args.projection
    projection = system.projection(name)()
    start: StartPosition = args.from_seq or args.from_time or "beginning"
    async with open_nats(settings, name=f"replay-{name}") as nats:
        started = time.monotonic()
        with _Progress(name, quiet=args.json) as progress, _home(settings, name) as home:
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
        + f"; it is kept beside: {_where(result.generation)}; to have readers use a partial "
        "model, run the replay with --switch-partial"
    )


def _where(generation: Generation) -> str:
    """How to look at a generation readers do not use."""
    if isinstance(generation, Path):
        return f"look at it with: sqlite3 -readonly {generation}"
    return f"look at it in schema {generation.name} (SET search_path TO {generation.name})"


class _Progress:
    """A bar on a terminal, a line every few seconds otherwise, nothing with --json."""

    def __init__(self, name: str, *, quiet: bool) -> None:
        self.name, self.quiet = name, quiet
        self.bar: Progress | None = None
        self.task: TaskID | None = None
        self.last_line = 0.0
        self.started = time.monotonic()

    def __enter__(self) -> _Progress:
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


async def _rewind(settings: Settings, system: System, name: str, to_seq: int) -> None:
    projection = system.projection(name)()
    async with open_nats(settings, name=f"rewind-{name}") as nats:
        with _home(settings, name) as home:
            result = await rewind(projection, home, nats.client, to_seq)
    dropped = f" ({result.previous.name} dropped)" if result.previous is not None else ""
    say(
        f"rewound {name} to sequence {to_seq}: {result.stats.applied} applied into "
        f"{result.generation.name}; readers switched{dropped}; it goes on from {to_seq + 1} "
        "when it next runs"
    )


def _dlq(settings: Settings, system: System, args: argparse.Namespace) -> None:
    projection = system.projection(args.projection)()
    with _home(settings, args.projection) as home:
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


async def _status(settings: Settings, system: System, as_json: bool) -> None:
    from toolkit.ops.status import collect, render

    async with open_nats(settings, name="status") as nats:
        report = await collect(system, settings, nats.client)
    if as_json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        Console().print(render(report))


def _serve(settings: Settings, system: System, host: str, port: int, *, relay: bool) -> None:
    import uvicorn

    from toolkit.http.app import create_app

    with contextlib.ExitStack() as locks:  # the relays run here: no other may run
        for name in system.commands if relay else ():
            context = system.context(name)(data_dir=settings.data_dir)
            try:
                locks.enter_context(relay_lock(context, "toolkit serve"))
            except RelayBusyError as exc:
                raise RelayBusyError(f"{exc} (or serve with --no-relay)") from None
            finally:
                context.close()
        nats = asyncio.run(_reach_nats(settings))  # refused like the other commands
        app = create_app(system, settings, relay=relay)
        say(
            f"serving {settings.system} at http://{host}:{port} from NATS {nats}, data in "
            f"{settings.data_dir}" + ("" if relay else " (relays run elsewhere)")
        )
        from toolkit.webhooks.keys import unavailable

        if (off := unavailable(settings.webhook_keys)) is not None:  # the rest works
            say(f"webhook subscriptions are off (503) until fixed: {off}")
        from uvicorn.config import STARTUP_FAILURE

        class Server(uvicorn.Server):
            """uvicorn's, which also stops the embedded server's keepers when told to
            exit: the same signal often stopped that server too."""

            def handle_exit(self, sig: int, frame: FrameType | None) -> None:
                stop_keeping()
                super().handle_exit(sig, frame)

        config = uvicorn.Config(
            app, host=host, port=port, log_level="info", log_config=_uvicorn_logging()
        )
        server = Server(config)
        server.run()
        if not server.started:  # as uvicorn.run: the port taken, the app failing to start
            sys.exit(STARTUP_FAILURE)


async def _reach_nats(settings: Settings) -> str:
    """Where the API's NATS is, once it answers and is recent enough (else ConnectError or
    ServerVersionError: one line, exit 1). The embedded server is started on first use."""
    if settings.nats_url is None:
        return f"embedded (in {Path(settings.data_dir) / 'nats'})"
    async with open_nats(settings, name="toolkit-serve-check") as nats:
        return nats.url


def _uvicorn_logging() -> dict[str, Any]:
    """uvicorn's logging, with its error log (tracebacks of the app's failures) redacted."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact"] = {"()": RedactingFilter}
    config["handlers"]["default"].setdefault("filters", []).append("redact")
    return config


async def _webhooks(settings: Settings, system: System, name: str) -> None:
    from toolkit.webhooks import dispatch

    system.context(name)  # an unknown name: one clear line
    await _until_signalled(lambda stop: dispatch(settings, name, stop, say))


async def _work(settings: Settings, system: System, name: str, workers: int) -> None:
    """Run ``workers`` workers of a work queue until stopped, like ``toolkit project``."""
    from nats.js.errors import NotFoundError

    from toolkit.backoff import pause

    factory = system.work_queue(name)  # an unknown name: one clear line
    async with open_nats(settings, name=f"work-{name}") as nats:
        work = factory(nats.connection, Path(settings.data_dir))
        queue = work.queue

        async def run(stop: asyncio.Event) -> list[Any]:
            waiting = False
            while not stop.is_set():
                try:
                    await queue.ensure()
                    break
                except NotFoundError:  # started before its context's first relay
                    if not waiting:
                        say(f"{name}: stream {queue.stream} does not exist yet; waiting for it")
                    waiting = True
                    await pause(stop, 1.0)
            if stop.is_set():
                return []
            say(f"working {name}: {workers} worker(s) on queue {queue.name} of stream "
                f"{queue.stream} at {nats.url}")  # fmt: skip
            tag = f"{name}-{os.getpid()}"
            return await asyncio.gather(*(work.worker(f"{tag}-{i}", stop) for i in range(workers)))

        stats = await _until_signalled(run)
    say(
        f"{name}: {sum(s.done for s in stats)} done, {sum(s.retried for s in stats)} retried, "
        f"{sum(s.given_up for s in stats)} given up, {sum(s.untrusted for s in stats)} not "
        "from its relay (skipped)"
    )


def run(args: argparse.Namespace) -> int:
    """Run the command ``args`` name (parsed by :func:`toolkit.cli.parser.parser`)."""
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    try:
        settings = _settings(args)
        if args.command == "demo":
            from toolkit.cli.demo import run_demo

            return asyncio.run(
                run_demo(settings, args.orders, args.customers, keep=args.keep, log=args.log)
            )
        if args.command == "webhooks-key":
            from toolkit.webhooks.keys import new_key

            print(new_key())  # stdout alone: TOOLKIT_WEBHOOK_KEYS=$(toolkit webhooks-key)
            return EXIT_OK
        system = load_system(settings.system, settings.app_dir)
        if args.command == "relay":
            asyncio.run(_relay(settings, system, args.context, args.once))
        elif args.command == "project":
            asyncio.run(
                _project(
                    settings,
                    system,
                    args.projection,
                    args.once,
                    args.partition,
                    args.partitions,
                    args.rebuild,
                )
            )
        elif args.command == "replay":
            asyncio.run(_replay(settings, system, args))
        elif args.command == "rewind":
            asyncio.run(_rewind(settings, system, args.projection, args.to_seq))
        elif args.command == "dlq":
            _dlq(settings, system, args)
        elif args.command == "status":
            asyncio.run(_status(settings, system, args.json))
        elif args.command == "serve":
            _serve(settings, system, args.host, args.port, relay=not args.no_relay)
        elif args.command == "webhooks":
            asyncio.run(_webhooks(settings, system, args.context))
        elif args.command == "generations":
            from toolkit.cli.generations import generations

            generations(settings, system, args)
        elif args.command == "work":
            asyncio.run(_work(settings, system, args.queue, args.workers))
        elif args.command == "react":
            from toolkit.cli.react import react

            asyncio.run(react(settings, system, args.policy, args.once, say, _until_signalled))
    except ToolkitError as exc:
        print(f"toolkit: error: {redact_urls(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        again = " (run the replay again to resume it)" if args.command == "replay" else ""
        print(f"toolkit: interrupted{again}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # anything else still gets one line; -v shows the traceback
        if args.verbose:
            raise
        detail = redact_urls(" ".join(str(exc).split()) or "no detail")
        print(
            f"toolkit: error: {type(exc).__name__}: {detail} (run with -v for details)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return EXIT_OK
