"""The part of ``toolkit status`` about projections and policies cut into slices: who
holds which slices (from the leases' bucket), and a projection's checkpoints in one row
per stream."""

from __future__ import annotations

from typing import Any

from nats.js import JetStreamContext

from toolkit.nats.leases import group_holders
from toolkit.readmodels import tables


def by_stream(positions: dict[str, Any] | None) -> dict[str, Any]:
    """A sliced projection's checkpoints in one row per stream: the lowest and highest
    checkpoint, the most lag."""
    rows: dict[str, Any] = {}
    sliced: dict[str, list[dict[str, Any]]] = {}
    for key, position in (positions or {}).items():
        if "#" in key:
            sliced.setdefault(tables.stream_of(key), []).append(position)
        else:
            rows[key] = position
    for stream, each in sliced.items():
        low, high = min(e["checkpoint"] for e in each), max(e["checkpoint"] for e in each)
        rows[f"{stream} ({len(each)} slices)"] = {
            "checkpoint": low if low == high else f"{low}..{high}",
            "lag_events": max(e["lag_events"] for e in each),
            "lag_seconds": max(e["lag_seconds"] for e in each),
        }
    return rows


async def slice_holders(js: JetStreamContext, group: str, count: int) -> dict[str, Any]:
    """Who holds which of the slices of lease group ``group`` (``projection.<name>``,
    ``policy.<name>``), by worker (host, pid, slices), and the slices nobody holds (their
    worker died: they move once its leases expire)."""
    workers: dict[str, dict[str, Any]] = {}
    free: list[int] = []
    for held in await group_holders(js, group, count):
        if held.holder is None:
            free.append(held.slice)
            continue
        h = held.holder
        entry = workers.setdefault(h.worker, {"host": h.host, "pid": h.pid, "slices": []})
        entry["slices"].append(held.slice)
    return {"count": count, "workers": workers, "free": free}


def holder_rows(what: str, sliced: dict[str, Any] | None) -> list[tuple[str, str, str, str, str]]:
    """The status table's rows of a sliced projection's or policy's workers (``what``:
    ``projection billing``), and of its free slices while some worker runs."""
    if not sliced:
        return []
    rows = [
        (f"{what} worker {worker}", f"holds {len(held['slices'])} of {sliced['count']} slices",
         f"pid {held['pid']} on {held['host']}", "", "")
        for worker, held in sliced.get("workers", {}).items()
    ]  # fmt: skip
    if sliced["free"] and sliced["workers"]:
        rows.append((what, f"{len(sliced['free'])} slices free", "", "", ""))
    return rows
