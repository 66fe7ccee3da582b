"""The policies' part of ``toolkit status``: for each policy the system declares, running
or not, the context it runs on, its position in each stream it reads (its tracking
record, read from the context's log, creating nothing), the lag after it in events and
seconds, and its dead letters by kind. Whether a reactor runs, and what it goes through,
comes from its report (:mod:`toolkit.ops.reports`, ``policy.<name>``), as for relays.

A policy cut into slices has a record a slice: its position in a stream is the lowest
(``slice_positions`` has each, by slice; the table shows ``lowest..highest``), the lag
is what waits after the lowest, and ``slices`` says which worker holds which slices (from
the leases of group ``policy.<name>``) and those nobody holds.
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
from toolkit.ops.slices import holder_rows
from toolkit.react.deadletters import count_dead_letters, dead_letters_path
from toolkit.react.policy import Policy
from toolkit.react.tracking import recorded_positions
from toolkit.system import System
from toolkit.write.context import BoundedContext

Holders = Callable[[str, int], Awaitable[dict[str, Any]]]
"""Who holds which slices of a lease group of so many slices (see
:func:`toolkit.ops.slices.slice_holders`)."""

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
    holders: Holders | None = None,
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
        if policy.slices is not None and holders is not None:
            entry["slices"] = await holders(f"policy.{policy.name}", policy.slices)
        try:
            positions, cuts = await asyncio.to_thread(
                _positions, open_log, context_class, Path(settings.data_dir), policy
            )
        except Exception as exc:  # a database down, a setting wrong
            if not no_table_yet(exc):
                entry["problems"] = [f"cannot read the log of context {context_class.name}: {exc}"]
                continue
            positions, cuts = _nowhere(policy), {}
        for stream, cut in cuts.items():
            if cut != policy.slices:
                how = "as a whole" if policy.slices is None else f"into {policy.slices}"
                entry.setdefault("problems", []).append(
                    f"was cut into {cut} slices of {stream}, and cannot run {how}: declare "
                    f"slices = {cut} on it"
                )
        for stream, each in positions.items():
            position = min(each)  # (cut into slices: what still waits is after the lowest)
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
            if policy.slices is not None:
                entry["streams"][stream]["slice_positions"] = each
    return entries


def _nowhere(policy: Policy[Any]) -> dict[str, list[int]]:
    """Every tracking record of the policy at 0 (no log yet)."""
    return {stream: [0] * (policy.slices or 1) for stream in policy.streams}


def _positions(
    open_log: OpenLog,
    context_class: type[BoundedContext[Any]],
    data_dir: Path,
    policy: Policy[Any],
) -> tuple[dict[str, list[int]], dict[str, int]]:
    """The policy's tracking records of each stream it reads (one, or one a slice: see
    :func:`~toolkit.react.tracking.recorded_positions`; 0: none yet, or no log), and the
    count of slices each stream was recorded cut into (none: never cut)."""
    context = open_log(context_class, data_dir)
    if context is None:
        return _nowhere(policy), {}
    with contextlib.closing(context):
        recorder = context.recorder
        if not isinstance(recorder, ProcessRecorder):
            return _nowhere(policy), {}
        positions = {s: recorded_positions(recorder, policy, s) for s in policy.streams}
        cuts = {s: recorder.max_tracking_id(policy.cut_tracking_name(s)) for s in policy.streams}
        return positions, {s: cut for s, cut in cuts.items() if cut is not None}


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
                    _where(stream, position) if position else "",
                    f"{position['lag_events']} events, {position['lag_seconds']:.1f}s"
                    if position
                    else "",
                    dead,
                )
            )
        rows += holder_rows(f"policy {name}", p.get("slices"))
    return rows


def _where(stream: str, position: dict[str, Any]) -> str:
    """A stream's position in the table: cut into slices, ``lowest..highest``."""
    each = position.get("slice_positions")
    if not each:
        return f"{stream} {position['position']}"
    low, high = min(each), max(each)
    return f"{stream} ({len(each)} slices) " + (str(low) if low == high else f"{low}..{high}")
