"""``toolkit status``: where every stream, relay and projection of a system stands.

For each stream its head; for each context its log head and the relay's lag, whichever
the log (SQLite, PostgreSQL, JetStream: the context is built from the environment as its
relay builds it, creating nothing; a log it cannot read is a problem, with why); for each
projection its version (and whether a rebuild is due), checkpoint per stream (per
slice when sliced), lag in events and in time, state and dead-letter count; for
a partial model (a replay from a later start) where it starts in each stream, and the
generations kept beside the one readers use; for each policy, running or not, its
positions, lag and dead letters (:mod:`toolkit.ops.policies`). Relays, projectors and
reactors running on the data folder say what they go through
(:mod:`toolkit.ops.reports`): one that cannot reach NATS, hangs, or leaves a backlog
unmoved for ``stall_after`` seconds gets that state, and the reason in ``problems``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eventsourcing.utils import Environment
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamState
from nats.js.errors import NotFoundError
from rich.table import Table

from toolkit.config import Settings
from toolkit.errors import MarkerError, ProjectionBusyError
from toolkit.nats.imports import jetstream
from toolkit.nats.streams import relay_tail
from toolkit.ops import reports
from toolkit.ops.slices import by_stream, holder_rows, slice_holders
from toolkit.read.replay import partial_from
from toolkit.readmodels import Generation, ReadModelHome, tables
from toolkit.readmodels.backends import connect, open_home
from toolkit.redaction import redact_urls
from toolkit.system import System
from toolkit.wire import MSG_ID
from toolkit.write.context import BoundedContext
from toolkit.write.resume import contradicts_log


async def collect(system: System, settings: Settings, client: Client) -> dict[str, Any]:
    js = jetstream(client)  # streams of other accounts through their imports
    streams: dict[str, dict[str, Any]] = {}

    states: dict[str, StreamState] = {}

    async def stream(name: str) -> dict[str, Any]:
        if name not in streams:
            try:
                state = states[name] = (await js.stream_info(name)).state
                streams[name] = {"head": state.last_seq, "messages": state.messages}
            except NotFoundError:
                streams[name] = {"head": 0, "messages": 0, "missing": True}
        return streams[name]

    counted: dict[tuple[str, int], int] = {}  # (a sliced projection's slices share most)

    async def behind(name: str, checkpoint: int) -> int:
        """Messages the stream holds after ``checkpoint``: deleted ones (a lost tail,
        another publisher's message removed) are not waiting for anybody."""
        if (name, checkpoint) not in counted:
            counted[name, checkpoint] = await _behind(name, checkpoint)
        return counted[name, checkpoint]

    async def _behind(name: str, checkpoint: int) -> int:
        await stream(name)
        state = states.get(name)
        if state is None or checkpoint >= state.last_seq:
            return 0
        if not state.num_deleted:
            return int(state.last_seq - max(checkpoint, state.first_seq - 1))
        config = ConsumerConfig(  # the server counts what a consumer from there would get
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=checkpoint + 1,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=5.0,
            mem_storage=True,
            num_replicas=1,
        )
        info = await js.add_consumer(name, config)
        with contextlib.suppress(Exception):
            await js.delete_consumer(name, info.name)
        return int(info.num_pending or 0)

    times: dict[tuple[str, int], datetime | None] = {}

    async def time_of(name: str, sequence: int) -> datetime | None:
        if (name, sequence) not in times:
            times[name, sequence] = None
            with contextlib.suppress(Exception):
                times[name, sequence] = (await js.get_msg(name, seq=sequence, next=True)).time
        return times[name, sequence]

    contexts: dict[str, Any] = {}
    for name, context_cls in system.contexts.items():
        head = (await stream(name))["head"]
        relay: dict[str, Any] = {"stream_head": head}
        # The log is read in a worker thread: a database that does not answer (a connect
        # timeout) or a long count must not hold the event loop of an API's readiness.
        try:
            context = await asyncio.to_thread(_open_log, context_cls, Path(settings.data_dir))
        except Exception as exc:  # a database down, a setting wrong: that relay's problem
            relay.setdefault("problems", []).append(f"cannot read its log: {exc}")
            context = None
        if context is not None and await _not_made_yet(js, context):
            await asyncio.to_thread(context.close)  # (as a SQLite file not made yet)
            context = None
        if context is not None:
            try:
                log_head = await asyncio.to_thread(context.recorder.max_notification_id)
                log_head = log_head or 0
                relayed = await _relayed_to(js, name, context, relay) if head else 0
                lag = await asyncio.to_thread(_to_carry, context, relayed, log_head)
                relay.update(log_head=log_head, relayed_to=relayed, relay_lag=lag)
            except Exception as exc:  # no table or stream yet, a server gone meanwhile
                from toolkit.ops.policies import no_table_yet

                if not no_table_yet(exc):
                    relay.setdefault("problems", []).append(f"cannot read its log: {exc}")
            finally:
                await asyncio.to_thread(context.close)
        contexts[name] = relay

    projections: dict[str, Any] = {}
    now = datetime.now(UTC)
    for name, projection_cls in system.projections.items():
        version = projection_cls.version
        home = open_home(settings, name)
        try:
            report, meta, checkpoints, dead = _read(home, version)
        finally:
            home.close()
        if report["generation"] is not None:
            stored = int(meta.get("version", version))
            report["stored_version"] = stored
            if stored != version:
                report["state"] = "rebuild due"
            elif "failing" in meta:
                report["state"] = "failing"
                report["failing"] = meta["failing"]
            report["dead_letters"] = dead
            positions: dict[str, Any] = {}
            for key, checkpoint in sorted(checkpoints.items()):
                stream_name = tables.stream_of(key)
                events = await behind(stream_name, checkpoint)
                seconds = 0.0
                if events:
                    oldest = await time_of(stream_name, checkpoint + 1)
                    seconds = max(0.0, (now - oldest).total_seconds()) if oldest else 0.0
                positions[key] = {
                    "checkpoint": checkpoint,
                    "lag_events": events,
                    "lag_seconds": round(seconds, 3),
                }
            report["streams"] = positions
        if projection_cls.slices is not None:  # (live: its workers share the writer lock)
            report["slices"] = await slice_holders(js, f"projection.{name}", projection_cls.slices)
        projections[name] = report
    from toolkit.ops.policies import collect_policies

    policies = await collect_policies(
        system, settings, open_log=_open_log, behind=behind, time_of=time_of,
        holders=lambda group, count: slice_holders(js, group, count),
    )  # fmt: skip
    found = [
        f"{kind} {name}: {problem}"
        for kind, entries in (("relay", contexts), ("policy", policies))
        for name, entry in entries.items()
        for problem in entry.get("problems", ())
    ]
    running = reports.read(settings.data_dir)
    found += _problems(contexts, projections, running, settings.stall_after, policies)
    report = {
        "streams": streams,
        "contexts": contexts,
        "projections": projections,
        "policies": policies,
    }
    redacted: dict[str, Any] = _redacted(report | {"problems": found})
    return redacted


def _redacted(value: Any) -> Any:
    """``value`` with the credentials of every URL in its texts removed: a problem quotes
    what a library said (a log database's error, a process's last warning), which may
    name a server with its password; status, readiness and /metrics show them."""
    if isinstance(value, str):
        return redact_urls(value)
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(item) for item in value]
    return value


def _open_log(context_cls: type[BoundedContext[Any]], data_dir: Path) -> BoundedContext[Any] | None:
    """The context as its relay builds it (from its environment, in the data folder), to
    read its log, whichever it is (SQLite, PostgreSQL, JetStream), creating nothing: no
    table or stream that is not there yet (eventsourcing's ``CREATE_TABLE``), and no
    SQLite file: None when the log is one not made yet."""
    keys = Environment(context_cls.name).create_keys("CREATE_TABLE")  # SALES_CREATE_TABLE too
    context = context_cls(env=dict.fromkeys(keys, "false"), data_dir=data_dir)
    log_file = context.log_file
    if log_file is not None and not log_file.exists():
        context.close()
        return None
    return context


async def _not_made_yet(js: JetStreamContext, context: BoundedContext[Any]) -> bool:
    """Whether the context's log is a JetStream log whose stream its first save has not
    made yet. Like a SQLite file not made yet (or a PostgreSQL table, see
    :func:`_no_table_yet`), that is no problem of its relay's (a context that has not
    written anything yet), and status creates nothing to look."""
    stream_name = getattr(context.recorder, "stream_name", None)
    if isinstance(stream_name, str):  # the JetStream log
        try:
            await js.stream_info(stream_name)
        except NotFoundError:
            return True
        except Exception:  # a server in trouble: reading the log will say so
            return False
        return False
    return False


_COUNTED = 100_000
"""Public events after the relay's position that status counts one by one; beyond, the
lag is given as the log's head minus the position (private events included)."""


def _to_carry(context: BoundedContext[Any], relayed: int, log_head: int) -> int:
    """Events of the published language the log holds after ``relayed``: private events
    (those the language does not map) are never carried, so they are no lag."""
    if log_head <= relayed:
        return 0
    topics = context.published_language.topics
    if not topics:
        return 0
    found = context.recorder.select_notifications(
        relayed, _COUNTED, topics=topics, inclusive_of_start=False
    )
    return len(found) if len(found) < _COUNTED else log_head - relayed


async def _relayed_to(
    js: JetStreamContext, name: str, context: BoundedContext[Any], relay: dict[str, Any]
) -> int:
    """The log position the relay has carried: that of its last message on the stream
    (others' messages claim nothing). One in its form that the log contradicts stops the
    relay: it is a problem, and the relay's message before it says how far it got."""
    with contextlib.suppress(Exception):  # a stream being changed: nothing claimed
        tail = await relay_tail(js, name)
        for _ in range(100):  # (as many messages in its form that stop it, at most)
            message = tail.last
            if message is None:
                return 0
            held = contradicts_log(context, message)
            if held is not None:
                why = (
                    f"is not the log's event at position {message.position} (the log holds {held})"
                )
            elif tail.before is not None and tail.before.position >= message.position:
                why = (
                    f"repeats log position {message.position} after sequence "
                    f"{tail.before.sequence} carried {tail.before.position}"
                )
            else:
                return message.position
            relay.setdefault("problems", []).append(
                f"stream {name} sequence {message.sequence} ({MSG_ID} {message.msg_id}) "
                f"{why}: the relay stops at it; remove it (nats stream rmm {name} "
                f"{message.sequence}) if something else published it"
            )
            tail = await relay_tail(js, name, below=message.sequence)
    return 0


def _problems(
    contexts: dict[str, Any],
    projections: dict[str, Any],
    running: dict[str, dict[str, Any]],
    stall_after: float,
    policies: dict[str, Any] | None = None,
) -> list[str]:
    """Give each relay, projection and policy the state and problems its processes
    report; all the problems, each naming its process."""
    now, found = time.time(), []
    kinds = (("relay", contexts), ("projection", projections), ("policy", policies or {}))
    for kind, entries in kinds:
        for name, entry in entries.items():
            mine = [r for k, r in sorted(running.items()) if k.split(".")[:2] == [kind, name]]
            states: list[str] = []
            for report in mine:
                worker = report["what"].removeprefix(f"{kind} {name}").strip()  # a slice worker
                for state, reason in reports.problems(report, now=now, stall_after=stall_after):
                    states.append(state)
                    entry.setdefault("problems", []).append(
                        f"{worker}: {reason}" if worker else reason
                    )
                    found.append(f"{report['what']}: {reason}")
            if kind in ("relay", "policy"):
                active = [r for r in mine if not r.get("standby")]
                entry["processes"] = [{"pid": r["pid"], "host": r["host"]} for r in active]
                entry["state"] = "running" if active else "stopped"
            if kind == "relay":  # standbys wait for the relay's lock: no problem
                waiting = [{"pid": r["pid"], "host": r["host"]} for r in mine if r.get("standby")]
                entry["standbys"] = waiting
                if waiting and not active:  # (between a holder's end and the takeover)
                    entry["state"] = "standing by"
            if states and entry["state"] not in ("rebuild due", "unreadable"):
                entry["state"] = min(states, key=_GRAVITY.index)
    return found


_GRAVITY = ["unresponsive", "unreachable", "failing", "stalled"]
"""Report states, the gravest first."""


def _with_standbys(relay: dict[str, Any]) -> str:
    """A relay's state, with the standbys waiting to take it over (``running, 2
    standbys: pid 7 on a, pid 9 on b``)."""
    waiting = relay.get("standbys") or []
    if not waiting:
        return str(relay["state"])
    each = ", ".join(f"pid {s['pid']} on {s['host']}" for s in waiting)
    return f"{relay['state']}, {len(waiting)} standby{'s' if len(waiting) > 1 else ''}: {each}"


def _read(
    home: ReadModelHome, version: int
) -> tuple[dict[str, Any], dict[str, str], dict[str, int], int]:
    """The projection's report so far, and its current generation's meta, checkpoints
    and dead-letter count."""
    report: dict[str, Any] = {"version": version, "state": _state(home), "generation": None}
    meta: dict[str, str] = {}
    checkpoints: dict[str, int] = {}
    dead = 0
    try:
        building = home.building()
        opened = home.open_reader()
    except MarkerError as exc:  # the message names the marker and what to do
        report.update(state="unreadable", reason=str(exc))
        return report, meta, checkpoints, dead
    report["beside"] = _beside(home, opened[0] if opened else None, building)
    if opened is not None:
        current, db = opened
        report["generation"] = current.name
        try:
            report["partial_from"] = partial_from(db) or None
            meta = tables.meta(db)
            checkpoints = dict(tables.checkpoints(db))
            dead = tables.count_dead_letters(db)
        except db.Error:
            meta, checkpoints, dead = {}, {}, 0
        finally:
            home.close_reader(db)
    return report, meta, checkpoints, dead


def _beside(
    home: ReadModelHome, current: Generation | None, building: Generation | None
) -> list[dict[str, Any]]:
    """The generations kept beside the one readers use (a partial replay's, a previous
    one kept): where each starts when partial, and its checkpoints."""
    kept: list[dict[str, Any]] = []
    skip = {g.name for g in (current, building) if g is not None}
    for generation in home.generations():
        if generation.name in skip:
            continue
        entry: dict[str, Any] = {"generation": generation.name, "partial_from": None}
        with contextlib.suppress(Exception):  # dropped meanwhile, or never written to
            db = connect(generation, readonly=True)
            try:
                entry["partial_from"] = partial_from(db) or None
                entry["checkpoints"] = dict(tables.checkpoints(db))
            finally:
                db.close()
        kept.append(entry)
    return kept


def _state(home: ReadModelHome) -> str:
    """``replaying`` while a replay runs, ``live`` while a projector runs, else
    ``paused``."""
    for lock, busy in (("replay", "replaying"), (None, "live")):
        try:
            with home.writer_lock(lock):
                pass
        except ProjectionBusyError:
            return busy
    return "paused"


def render(report: dict[str, Any]) -> Table:
    table = Table(title="toolkit status")
    for column in ("what", "state", "position", "lag", "dead letters"):
        table.add_column(column)
    for name, s in report["streams"].items():
        table.add_row(
            f"stream {name}", "missing" if s.get("missing") else "", f"head {s['head']}", "", ""
        )
    for name, c in report["contexts"].items():
        if "log_head" in c:
            table.add_row(
                f"relay {name}", _with_standbys(c),
                f"log {c['log_head']}, relayed {c['relayed_to']}", f"{c['relay_lag']} events", "",
            )  # fmt: skip
        elif c["state"] != "stopped":  # a relay of a log status does not read
            table.add_row(f"relay {name}", _with_standbys(c), "", "", "")
    for name, p in report["projections"].items():
        version = f"v{p['version']}"
        if p.get("stored_version") not in (None, p["version"]):
            version += f" (stored v{p['stored_version']})"
        rows = by_stream(p.get("streams")) or {"": None}
        starts = p.get("partial_from") or {}
        for key, position in rows.items():
            start = starts.get(tables.stream_of(key))
            table.add_row(
                f"projection {name} {version}",
                p["state"],
                f"{key} {position['checkpoint']}" + (f" (partial: from {start})" if start else "")
                if position
                else p.get("reason", "no read model"),
                f"{position['lag_events']} events, {position['lag_seconds']:.1f}s"
                if position
                else "",
                str(p.get("dead_letters", "")),
            )
        for row in holder_rows(f"projection {name}", p.get("slices")):
            table.add_row(*row)
        for kept in p.get("beside", []):
            partial = kept["partial_from"] or {}
            table.add_row(
                f"projection {name} {kept['generation']}",
                "kept beside",
                ", ".join(
                    f"{s} {n}" + (f" (partial: from {partial[s]})" if s in partial else "")
                    for s, n in kept.get("checkpoints", {}).items()
                ),
                "",
                "",
            )
    from toolkit.ops.policies import render_rows

    for row in render_rows(report.get("policies", {})):
        table.add_row(*row)
    table.caption = "\n".join(report["problems"])  # each with its reason
    table.caption_justify = "left"
    return table
