"""The dispatch of every `toolkit` command, and those that run until stopped: relay, project,
serve, webhooks, work (replay, dlq, react, generations and the demo have modules of their own).

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
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
from rich.console import Console

from toolkit.cli.console import read_model_home, say, settings_from, until_signalled
from toolkit.config import Settings
from toolkit.errors import (
    ConfigurationError,
    ProjectionVersionError,
    RelayBusyError,
    ToolkitError,
)
from toolkit.nats.connection import Nats, open_nats
from toolkit.nats.embedded import stop_keeping
from toolkit.nats.streams import StreamSpec
from toolkit.ops.reports import Reporter
from toolkit.read.projection import Projection
from toolkit.read.projector import Projector
from toolkit.read.replay import rebuild
from toolkit.read.store import ReadModelStore
from toolkit.redaction import RedactingFilter, redact_urls
from toolkit.system import System, load_system
from toolkit.write.context import BoundedContext
from toolkit.write.relay import Relay, RelayStats
from toolkit.write.relay_lock import RelayLease, relay_lease, relay_lock

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

console = Console(stderr=True, highlight=False, soft_wrap=True)  # one message, one line


async def _relay(
    settings: Settings, system: System, name: str, once: bool, standby: bool = False
) -> None:
    context = system.context(name)(data_dir=settings.data_dir)
    role = f"toolkit relay {name}"
    with contextlib.closing(context):
        stats = await until_signalled(
            lambda stop: _relay_while_held(settings, context, role, stop, once, standby)
        )
        if stats is not None:
            say(
                f"relayed to log position {stats.position}: {stats.published} published "
                f"(stream sequence {stats.stream_sequence})"
            )


async def _relay_while_held(
    settings: Settings,
    context: BoundedContext[Any],
    role: str,
    stop: asyncio.Event,
    once: bool,
    standby: bool,
) -> RelayStats | None:
    """Relay while this process holds the relay lock (:func:`relay_lease`); a standby
    waits for it first, and again after losing it, reporting itself as a standby
    (``toolkit status`` counts them). None: stopped while standing by."""
    name = context.name
    standing: list[Reporter] = []

    def waiting(holder: str) -> None:
        say(f"standing by: a relay of {name} runs ({holder}); taking over when it stops")
        reporter = Reporter(settings.data_dir)
        reporter.watch(
            f"relay.{name}.standby.{os.getpid()}", f"relay {name} standby", name=name,
            nats=lambda: None, position=lambda: 0, backlog=lambda: 0, standby=True,
        )  # fmt: skip
        reporter.start()
        standing.append(reporter)

    async def stood_by() -> None:
        while standing:
            await standing.pop().close()  # which removes its report

    stats: RelayStats | None = None
    async with open_nats(settings, name=f"relay-{name}") as nats:
        # (A JetStream log is read by relays of other hosts too: their lease is on NATS.)
        while not stop.is_set():
            try:
                async with relay_lease(
                    context, role, stop, standby=standby, waiting=waiting,
                    nats=nats.connection, ttl=settings.lease_ttl,
                    replicas=settings.stream_replicas,
                ) as lease:  # fmt: skip
                    await stood_by()
                    if lease is None:
                        return stats
                    stats = await _relay_held(settings, nats, context, lease, stop, once)
            finally:
                await stood_by()
            if once or not lease.lost.is_set():
                return stats
            lost = f"the relay of {name} lost its lock to {lease.holder or 'another relay'}"
            if not standby:
                raise RelayBusyError(f"{lost}: stopped")
            say(f"{lost}: standing by")
    return stats


async def _relay_held(
    settings: Settings,
    nats: Nats,
    context: BoundedContext[Any],
    lease: RelayLease,
    stop: asyncio.Event,
    once: bool,
) -> RelayStats:
    """Relay until ``stop`` is set or the lease is lost; report while relaying (a standby
    reports itself apart, see :func:`_relay_while_held`)."""
    name = context.name
    relaying = asyncio.Event()  # set by stop, or by losing the lock
    watching = [asyncio.create_task(event.wait()) for event in (stop, lease.lost)]
    for task in watching:
        task.add_done_callback(lambda _: relaying.set())
    try:
        async with Reporter(settings.data_dir) as reporter:
            relay = Relay(context, nats.connection, stream=StreamSpec.from_settings(name, settings))
            reporter.watch(
                f"relay.{name}",
                f"relay {name}",
                name=name,
                nats=lambda: nats.connection.trouble,
                position=lambda: relay.stats.position,
                backlog=relay.lag,
            )
            took = "took over: " if lease.waited else ""
            say(f"{took}relaying {name} log onto stream {relay.stream.name} at {nats.url}")
            return await relay.run(relaying, until_head=once)
    finally:
        for task in watching:
            task.cancel()


async def _project(
    settings: Settings,
    system: System,
    name: str,
    once: bool,
    rebuild_if_stale: bool = False,
) -> None:
    """The one worker of a projection; of one that declares ``slices``, one of any
    number of slice workers."""
    projection = system.projection(name)()
    if projection.slices is not None:
        await _project_slices(settings, projection, once, rebuild_if_stale)
        return
    with read_model_home(settings, name) as home, home.writer_lock():
        async with open_nats(settings, name=f"project-{name}") as nats:
            try:
                store = ReadModelStore(home.live(), projection)
            except ProjectionVersionError:
                if not rebuild_if_stale:
                    raise
                say(f"rebuilding {name}: its read model is of another version")
                await rebuild(projection, home, nats.client, locked=True)
                store = ReadModelStore(home.live(), projection)
            projector = Projector(projection, store, nats.connection)
            try:
                say(f"projecting {name} into {store.generation} from {nats.url}")
                async with Reporter(settings.data_dir) as reporter:
                    reporter.watch(
                        f"projection.{name}",
                        f"projection {name}",
                        name=name,
                        nats=lambda: nats.connection.trouble,
                        position=lambda: sum(projector.stats.checkpoints.values()),
                        backlog=lambda: sum(projector.stats.lag.values()),
                    )
                    stats = await until_signalled(
                        lambda stop: projector.run(stop, until_head=once, home=home)
                    )
                say(
                    f"{name}: {stats.applied} applied, {stats.skipped} skipped, "
                    f"{stats.dead_lettered} dead-lettered; checkpoints {stats.checkpoints}"
                )
            finally:
                projector.store.close()  # the one it ended in, after following a replay
                store.close()


async def _project_slices(
    settings: Settings, projection: Projection, once: bool, rebuild_if_stale: bool
) -> None:
    """One of any number of workers of a sliced projection: it holds the slices its
    leases give it, and hands them on when it stops (see :mod:`toolkit.read.slices`)."""
    from toolkit.read.slices import SlicedStore, SliceWorker, lease_group
    from toolkit.readmodels.interface import SLICE_WORKERS

    name, slices = projection.name, projection.slices
    assert slices is not None
    with read_model_home(settings, name) as home, home.writer_lock(SLICE_WORKERS):
        try:
            store = SlicedStore(home.live(), projection, slices)
        except ProjectionVersionError as exc:
            if not rebuild_if_stale:
                raise
            raise ConfigurationError(
                f"{exc}; the workers of a sliced projection do not rebuild it themselves: "
                f"run 'toolkit replay {name}', and they go on in the rebuilt model"
            ) from exc
        async with open_nats(settings, name=f"project-{name}") as nats:
            ttl, replicas = settings.lease_ttl, settings.stream_replicas
            leases = lease_group(nats.connection, projection, ttl=ttl, replicas=replicas)
            worker = SliceWorker(projection, store, nats.connection, leases)
            try:
                say(
                    f"projecting {name} into {store.generation} from {nats.url} as worker "
                    f"{leases.worker} of its {slices} slices"
                )
                async with Reporter(settings.data_dir) as reporter:
                    reporter.watch(
                        f"projection.{name}.{leases.worker}",
                        f"projection {name} worker {leases.worker}",
                        name=name,
                        nats=lambda: nats.connection.trouble,
                        position=lambda: sum(worker.stats.checkpoints.values()),
                        backlog=lambda: sum(worker.stats.lag.values()),
                    )
                    stats = await until_signalled(
                        lambda stop: worker.run(stop, until_head=once, home=home)
                    )
                say(
                    f"{name}: {stats.applied} applied, {stats.skipped} skipped, "
                    f"{stats.dead_lettered} dead-lettered; slices given back"
                )
            finally:
                worker.store.close()
                store.close()


async def _status(settings: Settings, system: System, as_json: bool) -> None:
    from toolkit.ops.status import collect, render

    async with open_nats(settings, name="status") as nats:
        report = await collect(system, settings, nats.client)
    if as_json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        Console().print(render(report))


def _serve(
    settings: Settings,
    system: System,
    host: str,
    port: int,
    *,
    relay: bool,
    policies: tuple[str, ...] = (),
    standby_relay: bool = False,
) -> None:
    import uvicorn

    from toolkit.cli.react import serve_policies
    from toolkit.http.app import create_app

    with contextlib.ExitStack() as locks:  # the relays run here: no other may run
        for name in system.commands if relay and not standby_relay else ():  # (else: the app's)
            context = system.context(name)(data_dir=settings.data_dir)
            try:
                locks.enter_context(relay_lock(context, "toolkit serve"))
            except RelayBusyError as exc:
                raise RelayBusyError(f"{exc} (or serve with --no-relay)") from None
            finally:
                context.close()
        reacting = serve_policies(locks, settings, system, policies)  # the same: one each
        nats = asyncio.run(_reach_nats(settings))  # refused like the other commands
        app = create_app(
            system, settings, relay=relay, policies=reacting, standby_relay=standby_relay, tell=say
        )
        say(
            f"serving {settings.system} at http://{host}:{port} from NATS {nats}, data in "
            f"{settings.data_dir}"
            + ("" if relay else " (relays run elsewhere)")
            + (" (relays stand by while others run them)" if relay and standby_relay else "")
            + (f"; policies {', '.join(reacting)} run here" if reacting else "")
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

        from toolkit.http.protocols import RefusingProtocol

        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            http=RefusingProtocol,  # (an unparseable request refused with a problem document)
            log_level="info",
            log_config=_uvicorn_logging(),
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
    await until_signalled(lambda stop: dispatch(settings, name, stop, say))


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

        stats = await until_signalled(run)
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
        settings = settings_from(args)
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
            asyncio.run(_relay(settings, system, args.context, args.once, args.standby))
        elif args.command == "project":
            asyncio.run(
                _project(
                    settings,
                    system,
                    args.projection,
                    args.once,
                    args.rebuild,
                )
            )
        elif args.command == "replay":
            from toolkit.cli.replay import replay

            asyncio.run(replay(settings, system, args))
        elif args.command == "rewind":
            from toolkit.cli.replay import rewind

            asyncio.run(rewind(settings, system, args.projection, args.to_seq))
        elif args.command == "dlq":
            from toolkit.cli.deadletters import dlq

            dlq(settings, system, args)
        elif args.command == "status":
            asyncio.run(_status(settings, system, args.json))
        elif args.command == "serve":
            _serve(
                settings,
                system,
                args.host,
                args.port,
                relay=not args.no_relay,
                policies=args.policies,
                standby_relay=args.standby_relay,
            )
        elif args.command == "webhooks":
            asyncio.run(_webhooks(settings, system, args.context))
        elif args.command == "generations":
            from toolkit.cli.generations import generations

            generations(settings, system, args)
        elif args.command == "work":
            asyncio.run(_work(settings, system, args.queue, args.workers))
        elif args.command == "react":
            from toolkit.cli.react import react

            asyncio.run(react(settings, system, args.policy, args.once, args.standby))
        elif args.command == "commands":
            from toolkit.cli.command_queue import run_commands

            asyncio.run(run_commands(settings, system, args.context, args.workers))
        elif args.command == "contracts" and args.contracts_command == "asyncapi":
            from toolkit.cli.asyncapi import asyncapi

            return asyncapi(system, settings, args)
        elif args.command == "contracts":
            from toolkit.cli.contracts import contracts

            return contracts(system, args)
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
