"""The ``toolkit`` command: run a context's relay and projections, replay, serve, demo.

Exit codes: 0 success; 1 a toolkit error (one line on stderr says why); 2 bad usage;
130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from toolkit.config import Settings
from toolkit.connection import open_nats, redact_urls
from toolkit.errors import ConfigurationError, ToolkitError
from toolkit.projector import Projector
from toolkit.relay import Relay
from toolkit.replay import rebuild
from toolkit.store import ProjectionHome, ReadModelStore
from toolkit.streams import StreamSpec
from toolkit.system import System, load_system

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

console = Console(stderr=True, highlight=False, soft_wrap=True)  # one message, one line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="toolkit",
        description=(
            "Event-sourced bounded contexts integrated through NATS JetStream. Without "
            "NATS_URL (or --nats-url) the toolkit starts an embedded nats-server."
        ),
        epilog="Exit codes: 0 ok, 1 error (one line says why), 2 bad usage, 130 interrupted.",
    )
    parser.add_argument("--nats-url", help="NATS server URL (env NATS_URL; default: embedded)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="folder for logs, read models and the embedded server (env TOOLKIT_DATA_DIR; "
        "default .toolkit)",
    )
    parser.add_argument(
        "--system",
        help="module:attribute of the System to run (env TOOLKIT_SYSTEM; default "
        "contexts.system:system, the example system)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo",
        help="run the example system end to end on an embedded server",
        description=(
            "Start NATS, drive commands through sales, relay them, run the shipping and "
            "billing projections to the head, replay shipping from zero and check it equals "
            "the live model, query the read endpoints, and print a summary."
        ),
    )
    demo.add_argument("--orders", type=_positive, default=3000, help="orders to place (3000)")
    demo.add_argument("--customers", type=_positive, default=300, help="customers (300)")
    demo.add_argument("--keep", action="store_true", help="keep the demo's data folder")

    relay = commands.add_parser(
        "relay",
        help="carry a context's log onto its stream",
        description="Relay a context's published events from its log onto its JetStream "
        "stream, in log order, exactly once. Runs until stopped (Ctrl-C or SIGTERM).",
    )
    relay.add_argument("context", help="context name, e.g. sales")
    relay.add_argument("--once", action="store_true", help="stop when the log head is relayed")

    project = commands.add_parser(
        "project",
        help="keep a projection's read model up to date",
        description="Apply the streams a projection reads to its read model, from its "
        "checkpoint on. Runs until stopped (Ctrl-C or SIGTERM).",
    )
    project.add_argument("projection", help="projection name, e.g. shipping")
    project.add_argument("--once", action="store_true", help="stop at the streams' heads")
    project.add_argument(
        "--partition",
        type=int,
        metavar="K",
        help="run as partition worker K (from 0) of --partitions N sharing one read model",
    )
    project.add_argument(
        "--partitions",
        type=_positive,
        metavar="N",
        help="how many partition workers there are; a new N repartitions from the head",
    )

    replay = commands.add_parser(
        "replay",
        help="rebuild a projection from the start of its streams",
        description="Build a new generation of a projection's read model from sequence 1 "
        "up to the streams' heads, beside the live one, then switch readers to it "
        "atomically. The projection's live projector must be stopped meanwhile.",
    )
    replay.add_argument("projection", help="projection name, e.g. shipping")
    replay.add_argument(
        "--keep-previous", action="store_true", help="keep the previous generation's file"
    )

    status = commands.add_parser(
        "status",
        help="show streams, relays and projections: positions, lag, state",
        description="For each stream its head; for each context its relay's lag; for each "
        "projection its version, checkpoint per stream, lag in events and in time, state "
        "(running, stopped, rebuild due) and dead letters.",
    )
    status.add_argument("--json", action="store_true", help="print JSON for machines")

    serve = commands.add_parser(
        "serve",
        help="serve the projections' read endpoints over HTTP",
        description="Serve the system's read API with uvicorn (OpenAPI at /docs).",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (8000)")
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    if args.nats_url:
        settings = replace(settings, nats_url=args.nats_url)
    if args.data_dir:
        settings = replace(settings, data_dir=args.data_dir)
    if args.system:
        settings = replace(settings, system=args.system)
    return settings


async def _until_signalled(run: Callable[[asyncio.Event], Awaitable[Any]]) -> Any:
    """Run with a stop event that SIGINT and SIGTERM set, for a clean shutdown."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await run(stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _relay(settings: Settings, system: System, name: str, once: bool) -> None:
    context = system.context(name)(data_dir=settings.data_dir)
    try:
        async with open_nats(settings, name=f"relay-{name}") as nats:
            relay = Relay(context, nats.client, stream=StreamSpec.from_settings(name, settings))
            console.print(f"relaying {name} log onto stream {relay.stream.name} at {nats.url}")
            stats = await _until_signalled(lambda stop: relay.run(stop, until_head=once))
            console.print(
                f"relayed to log position {stats.position}: {stats.published} published "
                f"(stream sequence {stats.stream_sequence})"
            )
    finally:
        context.close()


async def _project(
    settings: Settings,
    system: System,
    name: str,
    once: bool,
    partition: int | None = None,
    partitions: int | None = None,
) -> None:
    if (partition is None) != (partitions is None):
        raise ConfigurationError("--partition and --partitions go together")
    if partition is not None and partitions is not None and not 0 <= partition < partitions:
        raise ConfigurationError(f"--partition {partition} must be from 0 to {partitions - 1}")
    projection = system.projection(name)()
    home = ProjectionHome(settings.data_dir, name)
    with home.writer_lock(partition):
        store = ReadModelStore(home.live(), projection, partition=partition)
        try:
            async with open_nats(settings, name=f"project-{name}") as nats:
                console.print(f"projecting {name} into {store.path} from {nats.url}")
                projector = Projector(projection, store, nats.client, partitions=partitions)
                stats = await _until_signalled(lambda stop: projector.run(stop, until_head=once))
                console.print(
                    f"{name}: {stats.applied} applied, {stats.skipped} skipped, "
                    f"{stats.dead_lettered} dead-lettered; checkpoints {stats.checkpoints}"
                )
        finally:
            store.close()


async def _replay(settings: Settings, system: System, name: str, keep: bool) -> None:
    projection = system.projection(name)()
    home = ProjectionHome(settings.data_dir, name)
    async with open_nats(settings, name=f"replay-{name}") as nats:
        result = await rebuild(projection, home, nats.client, keep_previous=keep)
    resumed = f" (resumed from sequence {result.resumed_from})" if result.resumed_from else ""
    console.print(
        f"replayed {name}: {result.stats.applied} applied into {result.generation.name}"
        f"{resumed}; readers switched; checkpoints {result.stats.checkpoints}"
    )


async def _status(settings: Settings, system: System, as_json: bool) -> None:
    from toolkit.status import collect, render

    async with open_nats(settings, name="status") as nats:
        report = await collect(system, settings, nats.client)
    if as_json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        Console().print(render(report))


def _serve(settings: Settings, system: System, host: str, port: int) -> None:
    import uvicorn

    from toolkit.http import create_app

    uvicorn.run(create_app(system, settings), host=host, port=port, log_level="info")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = _settings(args)
        if args.command == "demo":
            from toolkit.demo import run_demo

            return asyncio.run(run_demo(settings, args.orders, args.customers, keep=args.keep))
        system = load_system(settings.system)
        if args.command == "relay":
            asyncio.run(_relay(settings, system, args.context, args.once))
        elif args.command == "project":
            asyncio.run(
                _project(
                    settings, system, args.projection, args.once, args.partition, args.partitions
                )
            )
        elif args.command == "replay":
            asyncio.run(_replay(settings, system, args.projection, args.keep_previous))
        elif args.command == "status":
            asyncio.run(_status(settings, system, args.json))
        elif args.command == "serve":
            _serve(settings, system, args.host, args.port)
    except ToolkitError as exc:
        print(f"toolkit: error: {exc}", file=sys.stderr)
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


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
