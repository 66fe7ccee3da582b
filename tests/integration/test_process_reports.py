"""What relays and projectors say about themselves in ``toolkit status`` and
``/health/ready`` (issue 16, "What to build"): a process that cannot reach NATS says so
within seconds, and a relay or projector whose backlog makes no progress for a while
(``TOOLKIT_STALL_AFTER``, short here) is reported with the reason. Both used to look
live: status read heads and checkpoints, never what the processes behind them went
through."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client
from nats.js.api import DiscardPolicy

from contexts.system import system
from tests.conftest import create_read_models, eventually, serving, wait_for
from tests.flow import sales_log
from toolkit.config import Settings
from toolkit.http.app import create_app
from toolkit.nats.embedded import EmbeddedServer
from toolkit.nats.streams import StreamSpec
from toolkit.ops.status import collect
from toolkit.readmodels.sqlite import SQLiteHome
from toolkit.readmodels.tables import dump


def _toolkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "toolkit", *args]


async def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a toolkit command to its end (a wide terminal: rich wraps status otherwise)."""
    return await asyncio.to_thread(
        subprocess.run,
        _toolkit(*args),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "300"},
    )


def _start(running: list[subprocess.Popen[bytes]], log: Path, *args: str) -> None:
    with log.open("wb") as out:
        running.append(subprocess.Popen(_toolkit(*args), stdout=out, stderr=out))


async def _state_becomes(
    settings: Settings,
    nc: Client,
    state: str,
    path: tuple[str, str],
    within: float,
    reason: str = "",
    **also: object,
) -> dict[str, Any]:
    """The status report once the relay or projection at ``path`` is in ``state`` (for a
    reason starting with ``reason``, and has the values ``also`` names)."""

    async def probe() -> dict[str, Any] | None:
        report = await collect(system, settings, nc)
        entry = report[path[0]][path[1]]
        wanted = (
            entry["state"] == state
            and all(entry.get(k) == v for k, v in also.items())
            and all(problem.startswith(reason) for problem in entry.get("problems", []))
        )
        return report if wanted else None

    return await eventually(probe, within=within, interval=0.2)


@pytest.mark.timeout(120)
async def test_a_projector_that_cannot_reach_nats_says_so_within_seconds(
    tmp_path: Path, nats_server: EmbeddedServer, nc: Client, running: list[subprocess.Popen[bytes]]
) -> None:
    data = tmp_path / "data"
    sales_log(data, 3)
    own = EmbeddedServer(tmp_path / "its-nats").start()  # the projector's, stopped below
    try:
        where = ["--data-dir", str(data), "--nats-url", own.url]
        relayed = await _cli(*where, "relay", "sales", "--once")
        assert relayed.returncode == 0, relayed.stderr
        _start(running, tmp_path / "project.log", *where, "project", "shipping")

        def shipments() -> int:
            with SQLiteHome(data, "shipping").reader() as db:
                return len(dump(db)["shipment"]) if db is not None else 0

        await wait_for(lambda: shipments() == 3, within=30)
    finally:
        own.stop()
    stopped = time.monotonic()
    # status, run with another server (the projector's is gone), says what it goes through
    settings = Settings(data_dir=data, nats_url=nats_server.url)
    report = await _state_becomes(settings, nc, "unreachable", ("projections", "shipping"), 15)
    assert time.monotonic() - stopped < 10
    (reason,) = report["projections"]["shipping"]["problems"]
    assert reason.startswith("cannot reach NATS (for ")
    assert f"projection shipping: {reason}" in report["problems"]

    shown = await _cli("--data-dir", str(data), "--nats-url", nats_server.url, "status")
    assert shown.returncode == 0, shown.stderr
    assert "unreachable" in shown.stdout
    assert "projection shipping: cannot reach NATS" in shown.stdout


def _stalling_after_a_second(data_dir: Path, nats_url: str) -> Settings:
    return Settings.from_env(
        {"TOOLKIT_DATA_DIR": str(data_dir), "NATS_URL": nats_url, "TOOLKIT_STALL_AFTER": "1"}
    )


async def _full_stream(nc: Client, max_msgs: int) -> None:
    """The sales stream as the relay makes it, but holding at most ``max_msgs`` messages
    and refusing more (limits an operator set): the relay's backlog cannot move."""
    config = replace(StreamSpec("sales").config(), discard=DiscardPolicy.NEW, max_msgs=max_msgs)
    await nc.jetstream().add_stream(config)


@pytest.mark.timeout(120)
async def test_a_relay_whose_backlog_does_not_move_is_reported_with_the_reason(
    data_dir: Path, nats_server: EmbeddedServer, nc: Client, running: list[subprocess.Popen[bytes]]
) -> None:
    sales_log(data_dir, 3)  # 4 events
    await _full_stream(nc, 2)
    where = ["--data-dir", str(data_dir), "--nats-url", nats_server.url]
    _start(running, data_dir.parent / "relay.log", *where, "relay", "sales")
    settings = _stalling_after_a_second(data_dir, nats_server.url)

    # (A relay slow to start is stalled too, 4 events behind: wait for the full stream.)
    report = await _state_becomes(
        settings, nc, "stalled", ("contexts", "sales"), 30, reason="2 events behind"
    )
    sales = report["contexts"]["sales"]
    assert sales["processes"] == [{"pid": running[0].pid, "host": os.uname().nodename}]
    (reason,) = sales["problems"]
    assert reason.startswith("2 events behind, no progress for ")
    assert "maximum messages exceeded" in reason  # the relay's own warning: the cause
    assert report["problems"] == [f"relay sales: {reason}"]

    # What the operator mends, the relay goes on from; status says so.
    config = (await nc.jetstream().stream_info("sales")).config
    await nc.jetstream().update_stream(replace(config, max_msgs=-1))
    report = await _state_becomes(settings, nc, "running", ("contexts", "sales"), 30, relay_lag=0)
    assert report["problems"] == []

    shown = await _cli(*where, "status", "--json")
    assert json.loads(shown.stdout)["contexts"]["sales"]["state"] == "running"
    running[0].send_signal(signal.SIGTERM)
    running[0].wait(20)
    report = await collect(system, settings, nc)
    assert report["contexts"]["sales"]["state"] == "stopped"


@pytest.mark.timeout(120)
async def test_readiness_names_a_stalled_relay_of_the_api(
    data_dir: Path, nats_server: EmbeddedServer, nc: Client
) -> None:
    sales_log(data_dir, 3)
    await _full_stream(nc, 2)
    settings = _stalling_after_a_second(data_dir, nats_server.url)
    create_read_models(data_dir, *system.projections.values())  # readiness waits for them
    async with serving(create_app(system, settings)) as base, httpx.AsyncClient() as http:

        async def not_ready() -> dict[str, Any] | None:
            answer = await http.get(f"{base}/health/ready")
            reasons = answer.json().get("reasons", []) if answer.status_code == 503 else []
            full = reasons and all("sales: 2 events behind" in r for r in reasons)
            return answer.json() if full else None  # (not the relay slow to start)

        body = await eventually(not_ready, within=30, interval=0.2)
        (reason,) = body["reasons"]
        assert reason.startswith("relay sales: 2 events behind, no progress for ")
        assert "maximum messages exceeded" in reason
