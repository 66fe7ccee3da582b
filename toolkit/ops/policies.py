"""The policies' part of ``toolkit status``: for each policy the system declares, running
or not, the context it runs on, its position in each stream it reads (its tracking
record, read from the context's log, creating nothing), the lag after it in events and
seconds, and its dead letters by kind. Whether a reactor runs, and what it goes through,
comes from its report (:mod:`toolkit.ops.reports`, ``policy.<name>``), as for relays.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eventsourcing.persistence import ProcessRecorder

from toolkit.config import Settings
from toolkit.react.deadletters import count_dead_letters, dead_letters_path
from toolkit.react.policy import Policy
from toolkit.system import System
from toolkit.write.context import BoundedContext

OpenLog = Callable[[type[BoundedContext[Any]], Path], BoundedContext[Any] | None]
"""The context as its relay builds it, creating nothing (None: no log yet)."""


def no_table_yet(exc: BaseException) -> bool:
    """Whether reading a PostgreSQL log failed for want of its table: a context that has
    not saved anything yet (status creates no table to look), no problem of anyone's."""
    return type(exc.__cause__).__name__ == "UndefinedTable"  # psycopg's, under eventsourcing's


async def collect_policies(
    system: System,
    settings: Settings,
    *,
    open_log: OpenLog,
    behind: Callable[[str, int], Awaitable[int]],
    time_of: Callable[[str, int], Awaitable[datetime | None]],
) -> dict[str, Any]:
    """Each policy's entry of the status report, by name (``state`` and ``processes``
    are added from the reports, as for relays)."""
    entries: dict[str, Any] = {}
    now = datetime.now(UTC)
    for name, policy_class in system.policies.items():
        entry: dict[str, Any] = {"streams": {}}
        entries[name] = entry
        try:
            context_class = system.policy_context(policy_class)
            policy = policy_class()
        except Exception as exc:  # a policy declared wrong: said, the rest goes on
            entry["problems"] = [f"cannot run: {exc}"]
            continue
        entry["context"] = context_class.name
        kinds = count_dead_letters(dead_letters_path(settings.data_dir, policy.name))
        entry["dead_letters"] = sum(kinds.values())
        entry["dead_letter_kinds"] = kinds
        try:
            positions = await asyncio.to_thread(
                _positions, open_log, context_class, Path(settings.data_dir), policy
            )
        except Exception as exc:  # a database down, a setting wrong
            if not no_table_yet(exc):
                entry["problems"] = [f"cannot read the log of context {context_class.name}: {exc}"]
                continue
            positions = dict.fromkeys(policy.streams, 0)
        for stream, position in positions.items():
            events = await behind(stream, position)
            seconds = 0.0
            if events:
                oldest = await time_of(stream, position + 1)
                seconds = max(0.0, (now - oldest).total_seconds()) if oldest else 0.0
            entry["streams"][stream] = {
                "position": position,
                "lag_events": events,
                "lag_seconds": round(seconds, 3),
            }
    return entries


def _positions(
    open_log: OpenLog,
    context_class: type[BoundedContext[Any]],
    data_dir: Path,
    policy: Policy[Any],
) -> dict[str, int]:
    """The policy's tracking record of each stream it reads (0: none yet, or no log)."""
    context = open_log(context_class, data_dir)
    if context is None:
        return dict.fromkeys(policy.streams, 0)
    with contextlib.closing(context):
        recorder = context.recorder
        if not isinstance(recorder, ProcessRecorder):
            return dict.fromkeys(policy.streams, 0)
        return {
            stream: recorder.max_tracking_id(policy.tracking_name(stream)) or 0
            for stream in policy.streams
        }


def render_rows(policies: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """The rows of ``toolkit status``'s table for the policies."""
    rows = []
    for name, p in policies.items():
        what = f"policy {name}" + (f" on {p['context']}" if "context" in p else "")
        kinds = p.get("dead_letter_kinds") or {}
        dead = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        for stream, position in (p.get("streams") or {"": None}).items():
            rows.append(
                (
                    what,
                    p.get("state", ""),
                    f"{stream} {position['position']}" if position else "",
                    f"{position['lag_events']} events, {position['lag_seconds']:.1f}s"
                    if position
                    else "",
                    dead,
                )
            )
    return rows
