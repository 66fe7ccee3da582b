"""``toolkit serve --standby-relay`` (issue 21): a serve whose relay lock another process
holds stands by instead of being refused, serves meanwhile (ready: a standby is
healthy), and takes the relay over when the holder dies; one that loses its lock (a
PostgreSQL session ended under it) stands by again. The stream stays the log."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client
from rich.console import Console

from benchmarks.relay import fill_log
from contexts.sales import Sales
from contexts.system import system
from tests.conftest import create_read_models, eventually, free_port, postgres, wait_for
from tests.faults.test_relay_faults import stream_holds
from tests.flow import assert_stream_is_the_log, place_orders, public_positions
from toolkit.config import Settings
from toolkit.nats.embedded import EmbeddedServer
from toolkit.ops.status import collect, render


class _Processes:
    """Toolkit processes of one data folder, each with its output in a file."""

    def __init__(self, data: Path, url: str, env: dict[str, str]) -> None:
        self.data, self.url = data, url
        self.env = {**os.environ, "TOOLKIT_READY_MAX_LAG": "1000000", **env}
        self.logs: dict[int, Path] = {}
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        log = self.data.parent / f"process-{len(self.started)}.log"
        command = [sys.executable, "-m", "toolkit", "--data-dir", str(self.data)]
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*command, "--nats-url", self.url, *args], stdout=out, stderr=out, env=self.env
            )
        self.started.append(process)
        self.logs[process.pid] = log
        return process

    def said(self, process: subprocess.Popen[bytes]) -> str:
        return self.logs[process.pid].read_text()

    def stop(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.started:
            process.wait(20)


async def _relays(base: str, *, ready: bool = True) -> dict[str, str]:
    """What ``/health/ready`` says each relay of the serve at ``base`` does."""
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:
        answer = await http.get("/health/ready")
    body: dict[str, Any] = answer.json()
    assert answer.status_code == (200 if ready else 503), body
    return dict(body["relays"])


async def _relays_become(base: str, wanted: dict[str, str], within: float = 10) -> None:
    async def probe() -> bool | None:
        try:
            return True if await _relays(base) == wanted else None
        except (httpx.HTTPError, AssertionError):  # not serving yet, or not ready yet
            return None

    await eventually(probe, within=within, interval=0.1)


STANDING = {"billing": "relaying", "sales": "standing by", "shipping": "relaying"}
RELAYING = {"billing": "relaying", "sales": "relaying", "shipping": "relaying"}


@pytest.mark.timeout(90)
async def test_a_standby_serve_takes_over_when_the_relay_is_killed(
    data_dir: Path, nats_server: EmbeddedServer, nc: Client
) -> None:
    """``toolkit relay sales`` relays; ``toolkit serve --standby-relay`` beside it stands
    by for sales (relaying the other contexts), ready, serving reads; the relay is
    SIGKILLed mid-relay (the log filled meanwhile), the serve takes over: each public
    event once, in log order."""
    sales = Sales(data_dir=data_dir)
    place_orders(sales, 5)
    create_read_models(data_dir, *system.projections.values())  # readiness waits for them
    processes = _Processes(data_dir, nats_server.url, {})
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        relay = processes.start("relay", "sales")
        await wait_for(lambda: "relaying sales log" in processes.said(relay), within=30)
        serve = processes.start("serve", "--port", str(port), "--standby-relay")
        await _relays_become(base, STANDING, within=30)
        said = processes.said(serve)
        assert f"standing by: a relay of sales runs (toolkit relay sales, pid {relay.pid} " in said
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:  # reads are served
            assert (await http.get("/health/live")).status_code == 200
        filling = asyncio.create_task(asyncio.to_thread(fill_log, sales, 12_000))
        await stream_holds(nc, 1_500)  # a little way into its work
        relay.send_signal(signal.SIGKILL)
        relay.wait(10)
        killed = time.monotonic()
        killed_at = (await nc.jetstream().stream_info("sales")).state.messages
        await _relays_become(base, RELAYING)
        took = time.monotonic() - killed
        assert "took over: relaying sales in this process" in processes.said(serve)
        await filling
        total = len(public_positions(sales))
        assert killed_at < total
        await stream_holds(nc, total)
        print(f"stream length at the kill: {killed_at} of {total}; readiness said "
              f"'relaying' {took:.2f}s after it")  # fmt: skip
        await assert_stream_is_the_log(nc, sales)
    finally:
        processes.stop()
        sales.close()
    assert serve.returncode in (0, -signal.SIGTERM), processes.said(serve)  # (uvicorn's)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("log_env", ["postgres"], indirect=True)
async def test_a_serve_that_lost_its_lock_stands_by_and_takes_over_again(
    data_dir: Path, nats_server: EmbeddedServer, nc: Client, log_env: dict[str, str]
) -> None:
    """A serve relays sales on a PostgreSQL log, a ``toolkit relay sales --standby``
    waits; the serve's lock session is ended under it (as a database restart or a cut
    connection would): the standby takes over, the serve says it lost the lock and
    stands by (still ready); the standby is SIGKILLed, the serve relays again."""
    sales = Sales(env=log_env, data_dir=data_dir)
    place_orders(sales, 20)
    create_read_models(data_dir, *system.projections.values())
    processes = _Processes(data_dir, nats_server.url, log_env)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        serve = processes.start("serve", "--port", str(port), "--standby-relay")
        await _relays_become(base, RELAYING, within=30)
        relay = processes.start("relay", "sales", "--standby")
        await wait_for(lambda: "standing by" in processes.said(relay), within=30)
        with postgres("test", "the postgres log") as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name LIKE %s",
                (f"toolkit serve, pid {serve.pid} %",),
            )
        await wait_for(lambda: "took over" in processes.said(relay), within=10)
        await _relays_become(base, STANDING)
        said = processes.said(serve)
        assert f"relay sales lost its lock to toolkit relay sales, pid {relay.pid}" in said
        place_orders(sales, 20)
        await stream_holds(nc, len(public_positions(sales)))
        relay.send_signal(signal.SIGKILL)
        relay.wait(10)
        await _relays_become(base, RELAYING)
        place_orders(sales, 20)
        await stream_holds(nc, len(public_positions(sales)))
        await assert_stream_is_the_log(nc, sales)
    finally:
        processes.stop()
        sales.close()
    assert serve.returncode in (0, -signal.SIGTERM), processes.said(serve)


@pytest.mark.timeout(90)
async def test_status_shows_the_active_relay_and_its_standbys(
    data_dir: Path, nats_server: EmbeddedServer, nc: Client
) -> None:
    """A ``toolkit relay sales`` relays, two ``--standby`` ones and a ``serve
    --standby-relay`` wait: status names the active relay's process and the three
    standbys (host and pid), with no problem; the active one is SIGKILLed, and status
    names the one that took over, and the two left waiting."""
    sales = Sales(data_dir=data_dir)
    place_orders(sales, 5)
    processes = _Processes(data_dir, nats_server.url, {})
    settings = Settings(data_dir=data_dir, nats_url=nats_server.url)
    host = socket.gethostname()
    try:
        relay = processes.start("relay", "sales")
        await wait_for(lambda: "relaying sales log" in processes.said(relay), within=30)
        waiting = [processes.start("relay", "sales", "--standby") for _ in range(2)]
        waiting.append(processes.start("serve", "--port", str(free_port()), "--standby-relay"))

        async def sales_relay() -> dict[str, Any] | None:
            report = await collect(system, settings, nc)
            found: dict[str, Any] = report["contexts"]["sales"]
            return report if len(found.get("standbys", ())) == len(waiting) else None

        report = await eventually(sales_relay, within=30, interval=0.2)
        found = report["contexts"]["sales"]
        assert found["state"] == "running"
        assert found["processes"] == [{"pid": relay.pid, "host": host}]
        assert sorted(s["pid"] for s in found["standbys"]) == sorted(p.pid for p in waiting)
        assert {s["host"] for s in found["standbys"]} == {host}
        assert not [p for p in report["problems"] if "relay sales" in p], report["problems"]
        console = Console(width=300, record=True)
        console.print(render(report))
        assert "running, 3 standbys: pid " in console.export_text()
        relay.send_signal(signal.SIGKILL)
        relay.wait(10)

        async def taken_over() -> dict[str, Any] | None:
            found = (await collect(system, settings, nc))["contexts"]["sales"]
            return found if found["processes"] and len(found["standbys"]) == 2 else None

        found = await eventually(taken_over, within=30, interval=0.2)
        (active,) = found["processes"]
        assert active["pid"] in {p.pid for p in waiting}
        assert {s["pid"] for s in found["standbys"]} == {p.pid for p in waiting} - {active["pid"]}
    finally:
        processes.stop()
        sales.close()
