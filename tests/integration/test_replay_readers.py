"""Readers through a replay: a reader querying the read endpoint every few milliseconds
never gets an error, an empty or a partial model, and after the switch it reads the new
generation."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from subprocess import PIPE

import httpx
import pytest
from nats.aio.client import Client

from benchmarks.relay import fill_log
from contexts.sales import Sales
from contexts.system import system
from projections.shipping import Shipments
from tests.conftest import serving, wait_for
from tests.flow import project_all, relay_all
from toolkit.config import Settings
from toolkit.http.app import create_app
from toolkit.nats.embedded import EmbeddedServer
from toolkit.readmodels.sqlite import SQLiteHome

EVENTS = 200_000 if os.environ.get("TOOLKIT_NIGHTLY") == "1" else 50_000
"""Events replayed under the readers: enough for hundreds of reads during the replay on
every run, four times as many in the nightly run (37 s on two cores)."""


@pytest.mark.timeout(240)
async def test_readers_see_a_whole_model_throughout_a_replay(
    nats_server: EmbeddedServer, nc: Client, data_dir: Path
) -> None:
    sales = Sales(data_dir=data_dir)
    try:
        fill_log(sales, EVENTS)
        head = await relay_all(sales, nc)
    finally:
        sales.close()
    assert head >= EVENTS
    await project_all(Shipments(), data_dir, nc)
    home = SQLiteHome(data_dir, "shipping")
    before = home.current()
    assert before is not None
    with home.reader() as db:
        assert db is not None
        (first,) = db.execute("SELECT shipment_id FROM shipment LIMIT 1").fetchone()

    outcomes: list[tuple[int, str, int]] = []  # status, read model, shipments seen
    done = asyncio.Event()
    app = create_app(system, Settings(data_dir=data_dir), relay=False)
    async with serving(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as http:

        async def reader() -> None:
            while not done.is_set():
                one = await http.get(f"/shipping/shipments/{first}")
                page = await http.get("/shipping/shipments", params={"limit": 500})
                for response, seen in (
                    (one, 1),
                    (page, len(page.json()["items"]) if page.status_code == 200 else 0),
                ):
                    outcomes.append(
                        (response.status_code, response.headers.get("x-read-model", ""), seen)
                    )
                await asyncio.sleep(0.002)  # a reader every few milliseconds, by design

        reading = asyncio.create_task(reader())
        await wait_for(lambda: len(outcomes) >= 20)
        started = time.monotonic()
        replay = await asyncio.create_subprocess_exec(  # the operator's replay
            sys.executable, "-m", "toolkit", "--data-dir", str(data_dir),
            "--nats-url", nats_server.url, "replay", "shipping", stderr=PIPE,
        )  # fmt: skip
        _, errors = await asyncio.wait_for(replay.communicate(), 200)
        replay_seconds = time.monotonic() - started
        assert replay.returncode == 0, errors.decode()
        during = len(outcomes)
        await wait_for(lambda: len(outcomes) >= during + 20)  # a few reads after the switch
        done.set()
        await reading
    after = home.current()
    assert after is not None and after != before and not before.exists()
    assert len(outcomes) > 100, (len(outcomes), replay_seconds)  # read all along
    assert {status for status, _, _ in outcomes} == {200}
    assert all(seen == 1 or seen == 500 for _, _, seen in outcomes)  # never empty, never partial
    generations = [model for _, model, _ in outcomes]
    assert generations[0] == f"shipping/{before.stem}"
    assert generations[-1] == f"shipping/{after.stem}"
    switch = generations.index(generations[-1])
    assert set(generations[switch:]) == {generations[-1]}  # once switched, never back
    assert switch > 20  # the old generation served until the switch
    print(f"{len(outcomes)} reads, {switch} before the switch, replay {replay_seconds:.1f}s")
