"""The ``toolkit`` command line: its arguments and their checks, apart from the commands
so that ``toolkit --help`` and usage errors start in a few tens of milliseconds."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def parser() -> argparse.ArgumentParser:
    """The whole command line: cheap to build, so ``--help`` imports nothing else."""
    parser = argparse.ArgumentParser(
        prog="toolkit",
        description=(
            "Event-sourced bounded contexts integrated through NATS JetStream. Without "
            "NATS_URL (or --nats-url) the toolkit starts an embedded nats-server."
        ),
        epilog="Exit codes: 0 ok, 1 error (one line says why), 2 bad usage, 130 interrupted.",
    )
    _global_options(parser, None)
    parser.add_argument(
        "--version", action="version", version=f"toolkit {_version()} ({DISTRIBUTION})"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # The same options after the command too (``toolkit status --data-dir d``): suppressed
    # unless given there, so they never undo what was given before the command.
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, argparse.SUPPRESS)

    def add(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[common], **kwargs)

    demo = add(
        "demo",
        help="run the example system end to end on an embedded server",
        description=(
            "Start NATS, drive commands through sales, relay them, run the shipping and "
            "billing projections to the head, replay shipping from zero and check it equals "
            "the live model, query the read endpoints, and print a summary."
        ),
    )
    demo.add_argument(
        "--orders", type=_up_to(1_000_000), default=3000, help="orders to place (3000)"
    )
    demo.add_argument("--customers", type=_up_to(100_000), default=300, help="customers (300)")
    demo.add_argument("--keep", action="store_true", help="keep the demo's data folder")
    demo.add_argument(
        "--log",
        choices=["sqlite", "jetstream"],
        default="sqlite",
        help="where sales keeps its event log: a SQLite file (default) or a JetStream stream",
    )

    relay = add(
        "relay",
        help="carry a context's log onto its stream",
        description="Relay a context's published events from its log onto its JetStream "
        "stream, in log order, exactly once. Runs until stopped (Ctrl-C or SIGTERM). Refused "
        "while another relay of the context runs ('toolkit relay', or 'toolkit serve' "
        "running it); the error names it. With --standby it waits instead, and takes over "
        "when that one stops or dies: run any number of standbys (on other hosts too, for "
        "a PostgreSQL or JetStream log; a JetStream log's holder is known by its lease on "
        "NATS, which a killed one keeps for TOOLKIT_LEASE_TTL, 6 s).",
    )
    relay.add_argument("context", help="context name, e.g. sales")
    relay.add_argument("--once", action="store_true", help="stop when the log head is relayed")
    relay.add_argument(
        "--standby",
        action="store_true",
        help="while another relay of the context runs, wait (saying once who holds the "
        "lock) and take over the moment it stops or dies, relaying from where the stream "
        "ends; SIGTERM stops the wait",
    )

    project = add(
        "project",
        help="keep a projection's read model up to date",
        description="Apply the streams a projection reads to its read model, from its "
        "checkpoint on. Runs until stopped (Ctrl-C or SIGTERM). A projection that "
        "declares slices (billing: 64) runs as one of any number of workers, on any hosts "
        "that reach its read model: they share the slices by lease on NATS, each slice "
        "applied in order by one worker at a time; a worker stopped hands its slices on at "
        "once, one killed or cut off loses them when its leases expire "
        "(TOOLKIT_LEASE_TTL, 6 s: they move within about 8 s). A projection without "
        "slices has one worker: a second is refused, naming the first.",
    )
    project.add_argument("projection", help="projection name, e.g. shipping")
    project.add_argument("--once", action="store_true", help="stop at the streams' heads")
    project.add_argument(
        "--rebuild",
        action="store_true",
        help="when the read model was built by another version of the projection, "
        "rebuild it first (otherwise that is refused)",
    )

    replay = add(
        "replay",
        help="rebuild a projection from its streams into a new generation",
        description="Build a new generation of a projection's read model from its streams "
        "up to their heads (as they are when it starts), beside the live one; then switch "
        "readers to it atomically and drop the previous generation. A running 'toolkit "
        "project' goes on in the new generation by itself. From a later start (--from-seq, "
        "--from-time) the model is partial: it holds only the events from there on, says so "
        "in 'toolkit status', and is kept beside the live one, which readers go on using, "
        "unless --switch-partial. An interrupted replay resumes when run again with the "
        "same start and no --to-seq below where it got (otherwise it begins anew). Refused, "
        "with nothing changed, when a stream does not exist, --from-seq is past its head or "
        "--to-seq before --from-seq, or another replay or a rewind runs.",
    )
    replay.add_argument("projection", help="projection name, e.g. shipping")
    start = replay.add_mutually_exclusive_group()
    start.add_argument("--from-start", action="store_true", help="from sequence 1 (default)")
    start.add_argument(
        "--from-seq", type=_positive, metavar="N",
        help="from stream sequence N (after 1, a partial model: kept beside the live one)",
    )  # fmt: skip
    start.add_argument(
        "--from-time", type=_moment, metavar="T", help="from the first event at or after T "
        "(ISO 8601, e.g. 2026-11-24T06:00:00Z; UTC when no zone is given); after the first "
        "event, a partial model: kept beside the live one"
    )  # fmt: skip
    replay.add_argument(
        "--to-seq", type=_positive, metavar="M",
        help="stop at sequence M (readers get the model as it was after M; a running "
        "projector goes on from M+1)",
    )  # fmt: skip
    replay.add_argument(
        "--switch-partial",
        action="store_true",
        help="switch readers to a partial model (--from-seq, --from-time) too: they then "
        "see only the events from its start on",
    )
    replay.add_argument(
        "--keep-previous",
        action="store_true",
        help="keep the previous generation (file or schema) when switching readers",
    )
    replay.add_argument("--json", action="store_true", help="print the result as JSON")

    rewind = add(
        "rewind",
        help="put a projection back to how it was at a stream sequence",
        description="Rebuild the projection's read model as it was after sequence N (a "
        "replay up to N, beside the live one), switch readers to it and drop the previous "
        "generation; the projection goes on from N+1 when it next runs. Refused, with "
        "nothing changed, while the projection or a replay of it runs, when a stream it "
        "reads does not exist, or when N is past a stream's head.",
    )
    rewind.add_argument("projection", help="projection name, e.g. shipping")
    rewind.add_argument(
        "--to-seq", type=int, required=True, metavar="N", help="the sequence (0 or more)"
    )

    generations = add(
        "generations",
        help="list a projection's generations; switch readers back to a kept one",
        description="List the generations of a projection's read model, oldest first: the "
        "one readers use (live), those kept beside it ('toolkit replay --keep-previous', a "
        "partial replay), one a replay is building; with each its version, checkpoints, "
        "dead letters, size and when its replay finished. With --use, switch readers to a "
        "kept generation atomically, as a replay does; the one they used is kept. A running "
        "'toolkit project' follows within a second and goes on from that generation's own "
        "checkpoints (catching it up). Refused, with nothing changed, while a replay or "
        "rewind runs, and for a generation being built, built by another version of the "
        "projection, or partial (unless --switch-partial).",
    )
    generations.add_argument("projection", help="projection name, e.g. shipping")
    generations.add_argument(
        "--use",
        metavar="GENERATION",
        help="the generation readers should use: its number (2, g000002) or name",
    )
    generations.add_argument(
        "--switch-partial",
        action="store_true",
        help="with --use: switch to a partial model too (readers then see only the events "
        "from its start on)",
    )
    generations.add_argument("--json", action="store_true", help="print JSON for machines")

    dlq = add(
        "dlq",
        help="list, show, retry or drop a projection's or a policy's dead letters",
        description="Dead letters are messages a projection could not apply (a broken "
        "contract, or a handler that kept failing), kept with the reason in its read model, "
        "or messages a policy recorded as processed without their effects, kept in "
        "policies/<policy>.sqlite of the data folder: parked (its reaction kept failing) or "
        "rejected (a command refused it, or its stream's relay did not publish it). A "
        "failing message parks its aggregate: the aggregate's later messages are parked "
        "behind it. retry applies (reacts to) them again with the code as it is now, "
        "oldest first, an aggregate's parked messages after the one that holds it; a "
        "policy's reaction is stored once however often it is retried; a policy's "
        "rejections are not retried. drop gives one up. retry and drop are refused while "
        "the projection or the policy runs.",
    )
    dlq.add_argument("action", choices=["list", "show", "retry", "drop"])
    dlq.add_argument(
        "projection",
        metavar="name",
        help="projection or policy name, e.g. shipping (a projection's first, unless --policy)",
    )
    dlq.add_argument(
        "--policy",
        action="store_true",
        help="the name is a policy's (when a projection has it too)",
    )
    dlq.add_argument("--seq", type=_positive, metavar="N", help="the dead letter at sequence N")
    dlq.add_argument(
        "--stream", help="its stream (needed when the projection or policy reads several)"
    )
    dlq.add_argument("--json", action="store_true", help="print JSON for machines")

    status = add(
        "status",
        help="show streams, relays and projections: positions, lag, state",
        description="For each stream its head; for each context its relay's lag and state "
        "(running, stopped), and the standby relays waiting to take it over (host and pid: "
        "no problem); for each projection its version, checkpoint per stream, lag in "
        "events and in time, state (live, replaying, paused, failing, rebuild due, or "
        "unreadable: a marker names no generation) and dead letters; for a partial model "
        "where it starts, and the generations kept beside the one readers use. Relays and "
        "projectors running on the data folder report what they go through: one that "
        "cannot reach NATS is 'unreachable', one that stopped reporting 'unresponsive', one "
        "whose backlog has not moved for TOOLKIT_STALL_AFTER seconds (30) 'stalled'; each "
        "problem is listed with its reason.",
    )
    status.add_argument("--json", action="store_true", help="print JSON for machines")

    serve = add(
        "serve",
        help="serve the system's API over HTTP (reads, commands, feed, health, metrics)",
        description=(
            "Serve the system's API with uvicorn (OpenAPI at /docs): projections' read "
            "endpoints, contexts' command endpoints (their relays run in this process, or "
            "stand by in it with --standby-relay), "
            "the event feed, /health/live, /health/ready and /metrics. Projections run "
            "apart ('toolkit project'); policies too ('toolkit react'), unless --policies "
            "names them. TOOLKIT_API_TOKENS turns on bearer-token auth."
        ),
    )
    serve.add_argument(
        "--host", type=_host, default="127.0.0.1", help="address to bind (127.0.0.1)"
    )
    serve.add_argument("--port", type=_port, default=8000, help="port, 0 to 65535 (8000)")
    serve.add_argument(
        "--policies",
        metavar="all|NAME[,NAME...]",
        type=_names,
        default=(),
        help="also run these policies of the system (all: every one) in this process, as "
        "'toolkit react' does; refused while one of them runs elsewhere (none by default)",
    )
    relaying = serve.add_mutually_exclusive_group()
    relaying.add_argument(
        "--no-relay",
        action="store_true",
        help="do not run the relays of the contexts served (another process runs them); "
        "without it, serve is refused while another relay of one of them runs",
    )
    relaying.add_argument(
        "--standby-relay",
        action="store_true",
        help="while another relay of a context served runs ('toolkit relay', another "
        "serve), stand by instead of being refused: serve meanwhile, and take that relay "
        "over the moment it stops or dies (/health/ready says 'standing by' or "
        "'relaying' per context; a standby is ready)",
    )
    hooks = add(
        "webhooks",
        help="deliver a context's events to its webhook subscribers",
        description="POST each event of a context's stream to the callback URLs subscribed "
        "to its type (registered at /webhooks/<context>/subscriptions of 'toolkit serve'), "
        "signed, retried with back-off; what keeps failing is parked (listed at "
        "/webhooks/<context>/dead-letters). Runs until stopped (Ctrl-C or SIGTERM). Run "
        "as many as the load needs on one data folder (one host: the store is SQLite): "
        "they share its deliveries and the stream's 'webhooks' consumer. When one dies, "
        "the deliveries it was attempting go to the others after TOOLKIT_LEASE_TTL "
        "seconds (6), sent again with the same webhook-id (receivers de-duplicate on it), "
        "and the events it had read but not acknowledged after 30 s.",
    )
    hooks.add_argument("context", help="context name, e.g. sales")
    work = add(
        "work",
        help="run a work queue's workers (e.g. notifications)",
        description="Run workers of a work queue the system declares (work_queues): they "
        "compete for its jobs, a durable JetStream consumer shared by every worker in any "
        "process; each job is acknowledged when done, handed to another worker when one "
        "dies or does not answer in time, given up after a few failures. The example's "
        "notifications sends each placed order's confirmation once, into the outbox "
        "notifications/outbox.sqlite of the data folder. Waits for the stream while it "
        "does not exist. Runs until stopped (Ctrl-C or SIGTERM).",
    )
    work.add_argument("queue", help="work queue name, e.g. notifications")
    work.add_argument(
        "--workers", type=_up_to(256), default=1, metavar="N", help="workers in this process (1)"
    )
    react = add(
        "react",
        help="run a policy: a context reacting to other contexts' events",
        description="Run a policy the system declares (policies) on the context it names: "
        "read the foreign streams it reads from its tracking records on and, for each "
        "event, run its commands on that context; the events they cause and the tracking "
        "record of the message are stored in one transaction of the context's log, so each "
        "foreign event causes its effects once, whatever crashes. A command refused "
        "(InvalidCommand) is recorded with its reason; a message whose reaction keeps "
        "failing is retried, then parked: both are kept as dead letters in "
        "policies/<policy>.sqlite of the data folder and the policy moves on. Waits for a "
        "stream while it does not exist. A message of an aggregate parked behind an "
        "earlier dead letter is parked behind it too. 'toolkit dlq' lists, retries and "
        "drops the dead letters; 'toolkit status' shows the policy's positions and lag. "
        "Refused while the policy runs elsewhere ('toolkit react', or 'toolkit serve "
        "--policies'); with --standby it waits instead, and takes over when that one stops "
        "or dies (run any number of standbys: one reacts). A policy that declares slices "
        "is run by any number of these processes at once, sharing its slices by lease: "
        "each slice is reacted to in order by one of them, and a dead one's slices move to "
        "the others once its leases expire (TOOLKIT_LEASE_TTL, 6 s); --standby changes "
        "nothing for it. Runs until stopped (Ctrl-C or SIGTERM).",
    )
    react.add_argument("policy", help="policy name, e.g. shipments")
    react.add_argument(
        "--once",
        action="store_true",
        help="stop at the streams' heads (cut into slices: once every slice is there, "
        "those of workers gone included)",
    )
    react.add_argument(
        "--standby",
        action="store_true",
        help="while another reactor of the policy runs, wait (saying once who holds its "
        "lock) and take over the moment it stops or dies, from its tracking records; "
        "SIGTERM stops the wait",
    )
    queued = add(
        "commands",
        help="run workers of a context's command queue (commands accepted with 202)",
        description="Run workers of the command queue the system declares for a context "
        "(command_queues): they compete, with every worker of the queue in any process, for "
        "the commands its API accepted with 202 (the stream <context>_commands, its durable "
        "consumer 'workers'), and run each on the context once: its events and its outcome "
        "are stored in one transaction of the context's log, so a command delivered again "
        "(a worker killed before acknowledging it) is not run again. Each command's status "
        "(bucket <context>_commands) ends done, with its consistency token and result, or "
        "failed, with a problem document: at once when the context refuses it, after the "
        "queue's max_deliver tries for other failures. Runs until stopped (Ctrl-C or SIGTERM).",
    )
    queued.add_argument("context", help="context name, e.g. sales")
    queued.add_argument(
        "--workers", type=_up_to(256), default=1, metavar="N", help="workers in this process (1)"
    )
    add(
        "webhooks-key",
        help="print a new key for TOOLKIT_WEBHOOK_KEYS",
        description="Print a new Fernet key. Webhook secrets are sealed at rest with the "
        "keys of TOOLKIT_WEBHOOK_KEYS (comma-separated: the first seals, all open). To "
        "rotate: put the new key first, keep the old one after it until 'toolkit serve' "
        "and 'toolkit webhooks <context>' have each run with the list (each store seals "
        "its secrets again under the first key when opened), then drop the old key.",
    )
    _contracts(add("contracts", help="write or check the published contracts' JSON Schemas",
        description="Each contract version the system's contexts publish as a JSON Schema "
        "(draft 2020-12), for teams that do not read Python: written to a folder kept in "
        "version control, checked against it in CI. Needs no NATS."), common)  # fmt: skip
    return parser


def _contracts(contracts: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    """``toolkit contracts ACTION``: one action per document made of the contracts."""
    actions = contracts.add_subparsers(dest="contracts_command", metavar="ACTION", required=True)
    write = actions.add_parser("write", parents=[common],
        help="write each published contract version's JSON Schema to a folder",
        description="Write each published contract version's JSON Schema to DIR (made if "
        "missing) as <contract>.v<version>.json, e.g. sales.OrderPlaced.v1.json. Files of "
        "versions no longer published stay. Overwriting a file with a change that breaks "
        "its version's consumers is refused (exit 1, naming each) unless --force.")  # fmt: skip
    write.add_argument("--force", action="store_true", help="overwrite despite breaks")
    check = actions.add_parser("check", parents=[common],
        help="check the published contracts against the schemas in a folder",
        description="Compare each published contract version with its schema in DIR. Exit "
        "1, one line per break, when a change breaks the consumers of a version: a field "
        "removed or retyped, a required field added, an enum's values changed. Additive "
        "changes pass (an optional field, a new contract or version), as do a version "
        "missing from DIR (run write) and one no longer published (a note each).")  # fmt: skip
    for action in (write, check):
        action.add_argument("dir", type=Path, metavar="DIR", help="the folder of the schemas")
    from toolkit.cli.asyncapi import add_action  # its own module: this one stays short

    add_action(actions, common)


DISTRIBUTION = "jetstream-contexts"
"""The name on PyPI (``toolkit`` there is another project); the import name is ``toolkit``."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown (not installed)"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _up_to(limit: int) -> Callable[[str], int]:
    """A whole number from 1 to ``limit``: a count that sizes what a process starts or
    does (workers, orders), so that a slip of the keyboard is an error, not a hang."""

    def count(text: str) -> int:
        value = _positive(text)
        if value > limit:
            raise argparse.ArgumentTypeError(f"{value} is more than {limit:,}")
        return value

    return count


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated list of names (``all`` stays as it is, for the command)."""
    names = tuple(name.strip() for name in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of names (a,b or all)")
    return names


def _port(text: str) -> int:
    """A TCP port: a usage error here rather than a traceback from the socket later."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port: from 0 to 65535")
    return value


def _host(text: str) -> str:
    """An address or host name to bind: not empty, no spaces or control characters."""
    if not text or any(c.isspace() or not c.isprintable() for c in text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an address to bind")
    return text


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _global_options(options: argparse.ArgumentParser, default: Any) -> None:
    """The options every command takes, before or after its name."""
    options.add_argument(
        "--nats-url", default=default, help="NATS server URL (env NATS_URL; default: embedded)"
    )
    options.add_argument(
        "--data-dir",
        default=default,
        type=Path,
        help="folder for logs, read models and the embedded server (env TOOLKIT_DATA_DIR; "
        "default .toolkit)",
    )
    options.add_argument(
        "--system",
        default=default,
        help="module:attribute of the System to run (env TOOLKIT_SYSTEM; default "
        "contexts.system:system, the example system)",
    )
    options.add_argument(
        "--app-dir",
        default=default,
        type=Path,
        metavar="DIR",
        help="the folder the system's module is imported from (env TOOLKIT_APP_DIR; "
        "default: the current folder)",
    )
    options.add_argument(
        "--read-model-url",
        default=default,
        metavar="URL",
        help="a PostgreSQL database (postgresql://...) for the projections' read models "
        "(env TOOLKIT_READ_MODEL_URL; default: SQLite files in the data folder)",
    )
    options.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="log what happens"
    )
