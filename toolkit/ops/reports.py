"""What a running relay or projector says about itself, for ``toolkit status`` and
``/health/ready``.

A stream's head and a checkpoint do not say what the process behind them goes through:
one that cannot reach NATS (its server went away, or it dials where none listens any
more) looks as live as one at work, and a backlog that does not move looks like one being
worked off. So each relay and projector process writes a report every second,
``<data dir>/run/<key>.json``, replaced atomically: who it is, whether its NATS connection
works (and why not, since when), its position, its backlog and when the position last
moved, and the last warning it logged about what it runs. Readers judge by the clock
(:func:`problems`): a report not renewed for a few seconds is a process that hangs; a
backlog whose position has not moved for ``stall_after`` seconds (``TOOLKIT_STALL_AFTER``,
30 by default) is a stall, reported with that warning as its likely reason. A report left
behind by a process that has gone (killed by SIGKILL) is ignored: on its host, a process
is known by its pid and start time, which no later process shares.

Reports live in the data folder, so ``toolkit status`` sees the processes sharing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from toolkit.backoff import cancel_and_wait

EVERY = 1.0
"""Seconds between two reports of a process."""
UNRESPONSIVE_AFTER = 5.0
"""Seconds without a new report after which its process is said to hang."""

_HOST = socket.gethostname()


def _started(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), if it runs (Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def _runs(report: dict[str, Any]) -> bool:
    """Whether the process that wrote ``report`` still runs, as far as this host can
    tell (one on another host is judged by its report's age alone)."""
    if report.get("host") != _HOST:
        return True
    if Path("/proc/self/stat").exists():
        return report.get("started") is not None and _started(report["pid"]) == report["started"]
    try:
        os.kill(report["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class _Watched:
    what: str
    name: str
    nats: Callable[[], str | None]
    failing: Callable[[], str | None]
    position: Callable[[], int]
    backlog: Callable[[], int]
    standby: bool = False
    last_position: int | None = None
    moved: float = 0.0
    nats_since: float | None = None


class _LastWarnings(logging.Handler):
    """The last warning (or error) the toolkit logged that names each watched thing."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.names: frozenset[str] = frozenset()  # replaced, never changed: other threads log
        self.last: dict[str, tuple[float, str]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record of someone else's: not ours to raise
            return
        for name in self.names:
            if name in message:
                self.last[name] = (record.created, message)


class Reporter:
    """Writes the reports of what this process runs, every second, from :meth:`start`
    to :meth:`close` (or as an async context manager), which removes them."""

    def __init__(self, data_dir: Path | str) -> None:
        self.folder = Path(data_dir) / "run"
        self._watched: dict[str, _Watched] = {}
        self._warnings = _LastWarnings()
        self._task: asyncio.Task[None] | None = None

    def watch(
        self,
        key: str,
        what: str,
        *,
        name: str,
        nats: Callable[[], str | None],
        position: Callable[[], int],
        backlog: Callable[[], int],
        failing: Callable[[], str | None] = lambda: None,
        standby: bool = False,
    ) -> None:
        """Report on ``what`` (``relay sales``) in ``<key>.json``: ``nats()`` says why
        NATS cannot be reached (None when it can), ``failing()`` why it is stopped
        otherwise, ``position()`` and ``backlog()`` where it is and how much is left;
        warnings naming ``name`` are kept as a likely reason of a stall. ``standby``: a
        process waiting to take over (a standby relay), which status counts apart."""
        watched = _Watched(what, name, nats, failing, position, backlog, standby)
        self._watched[key] = watched
        self._warnings.names |= {name}

    def unwatch(self, key: str) -> None:
        """Stop reporting on ``key``, and remove its report: a standby that took over
        reports under the active relay's key instead, and one that lost its lock the
        other way round."""
        if self._watched.pop(key, None) is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.folder / f"{key}.json").unlink()

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        logging.getLogger("toolkit").addHandler(self._warnings)
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        logging.getLogger("toolkit").removeHandler(self._warnings)
        for key in self._watched:
            with contextlib.suppress(FileNotFoundError):
                (self.folder / f"{key}.json").unlink()

    async def __aenter__(self) -> Reporter:
        self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _run(self) -> None:
        while True:
            now = time.time()
            for key, watched in list(self._watched.items()):
                self._write(key, watched, now)
            await asyncio.sleep(EVERY)

    def _write(self, key: str, watched: _Watched, now: float) -> None:
        report: dict[str, Any] = {
            "what": watched.what,
            "pid": os.getpid(),
            "host": _HOST,
            "started": _started(os.getpid()),
            "updated": now,
        }
        if watched.standby:
            report["standby"] = True
        try:
            position, backlog = watched.position(), watched.backlog()
        except Exception as exc:  # e.g. its log cannot be read: say so, keep reporting
            report["error"] = f"{type(exc).__name__}: {exc}"
            position, backlog = watched.last_position or 0, 0
        if position != watched.last_position or backlog == 0:
            watched.last_position, watched.moved = position, now
        nats = watched.nats()
        if nats is None:
            watched.nats_since = None
        elif watched.nats_since is None:
            watched.nats_since = now
        warned = self._warnings.last.get(watched.name)
        report.update(
            position=position,
            backlog=backlog,
            moved=watched.moved,
            nats=nats,
            nats_since=watched.nats_since,
            failing=watched.failing(),
            warning=warned[1] if warned else None,
            warned=warned[0] if warned else None,
        )
        written = self.folder / f".{key}.{os.getpid()}"
        with contextlib.suppress(OSError):  # a full disk must not stop what is reported on
            written.write_bytes(orjson.dumps(report))
            os.replace(written, self.folder / f"{key}.json")


def read(data_dir: Path | str) -> dict[str, dict[str, Any]]:
    """The reports of the processes running on ``data_dir``, by key."""
    found: dict[str, dict[str, Any]] = {}
    for path in (Path(data_dir) / "run").glob("*.json"):
        try:
            report = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        if isinstance(report, dict) and _runs(report):
            found[path.stem] = report
    return found


def problems(report: dict[str, Any], *, now: float, stall_after: float) -> list[tuple[str, str]]:
    """What keeps the process of ``report`` from making progress, as (state, reason)
    pairs, the gravest first: ``unresponsive``, ``unreachable`` (NATS), ``failing``,
    ``stalled``."""
    found: list[tuple[str, str]] = []
    silent = now - report["updated"]
    if silent > UNRESPONSIVE_AFTER:
        found.append(
            (
                "unresponsive",
                f"its process (pid {report['pid']} on {report['host']}) has not reported "
                f"for {silent:.0f}s: it hangs",
            )
        )
    if report.get("nats"):
        since = now - (report.get("nats_since") or now)
        found.append(("unreachable", f"cannot reach NATS (for {since:.0f}s): {report['nats']}"))
    for failing in (report.get("failing"), report.get("error")):
        if failing:
            found.append(("failing", failing))
    still = now - report["moved"]
    if report["backlog"] > 0 and still > stall_after:
        reason = f"{report['backlog']} events behind, no progress for {still:.0f}s"
        if report.get("warning"):
            ago = now - report["warned"]
            reason += f" (its last warning, {ago:.0f}s ago: {report['warning']})"
        found.append(("stalled", reason))
    return found
