"""``toolkit react`` SIGKILLed at random while the foreign context goes on publishing: every
order still causes exactly one parcel and one count of its item, on each log (SQLite,
PostgreSQL, JetStream), and the tracking record ends at the last sequence processed.

The contexts are test_policies' (shop publishes orders, depot packs and counts them); the
system the processes load is test_react's. The counts are the sharp check: a reaction run
twice would count an item twice (a parcel's id comes from its order, so a second parcel
could never be stored, but a second count could).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from eventsourcing.persistence import ProcessRecorder

from tests.conftest import wait_for
from tests.integration.test_policies import Depot, OrderPlaced, depot_env, open_depot
from toolkit.nats.connection import connect
from toolkit.nats.embedded import EmbeddedServer
from toolkit.nats.streams import StreamSpec, ensure_stream
from toolkit.testing import relayed_event

__all__ = ["depot_env"]  # the fixture: a SQLite, PostgreSQL or JetStream log for depot

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
ORDERS = 240
KILLS = 4
ITEMS = ("tea", "jam", "rice", "salt")


def react_process(
    url: str, data_dir: Path, env: dict[str, str], *args: str
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "toolkit", "--nats-url", url, "--data-dir", str(data_dir),
         "--system", "tests.integration.test_react:system", "react", "parcels", *args],
        cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def tracking(depot: Depot) -> int:
    recorder = depot.recorder
    assert isinstance(recorder, ProcessRecorder)
    return recorder.max_tracking_id("parcels:shop") or 0


async def publish_orders(url: str, items: list[str], first: int, published: list[int]) -> None:
    """shop's orders from log position ``first`` on, as its relay publishes them, paced
    so that the reactor runs while they come."""
    nc = await connect(url)
    try:
        js = nc.jetstream()
        await ensure_stream(js, StreamSpec("shop"))
        for position, item in enumerate(items, start=first):
            event = relayed_event(
                OrderPlaced(order_id=f"o{position}", item=item),
                position=position,
                aggregate_id=f"o{position}",
            )
            await js.publish(event.subject, event.body, headers=dict(event.headers))
            published.append(position)
            if position % 8 == 0:
                await asyncio.sleep(0.01)
    finally:
        await nc.close()


async def test_reactors_killed_at_random_cause_each_effect_exactly_once(
    nats_server: EmbeddedServer, depot_env: dict[str, str], tmp_path: Path
) -> None:
    """Each round publishes a share of the orders while a reactor runs, and kills it at a
    random point once it has stored something; the last share is left to a run to the
    head. The reactor stores runs of messages in one transaction, so kills fall inside
    runs as well as between them."""
    rng = random.Random(20261130)
    items = [rng.choice(ITEMS) for _ in range(ORDERS)]
    share = ORDERS // (KILLS + 1)
    data_dir = tmp_path / "data"
    env = {**depot_env, "TOOLKIT_DATA_DIR": str(data_dir)}
    env.setdefault("NATS_URL", nats_server.url)
    published: list[int] = []
    depot = open_depot(depot_env, data_dir)  # reads what the processes store
    killed_at: list[int] = []  # the tracking record when each process was killed
    publishing: asyncio.Task[None] | None = None
    try:
        for round_ in range(KILLS):
            process = react_process(nats_server.url, data_dir, env)
            try:
                start = tracking(depot)
                chunk = items[round_ * share : (round_ + 1) * share]
                publishing = asyncio.create_task(
                    publish_orders(nats_server.url, chunk, round_ * share + 1, published)
                )
                # killed once it has stored at least one reaction more, at a random point
                await wait_for(lambda s=start: tracking(depot) > s, within=30, interval=0.01)
                await asyncio.sleep(rng.uniform(0.0, 0.05))  # anywhere in what follows
                process.send_signal(signal.SIGKILL)
                killed_at.append(tracking(depot))
                await publishing
            finally:
                process.kill()
                process.wait(10)
        rest = items[KILLS * share :]
        await publish_orders(nats_server.url, rest, KILLS * share + 1, published)
        final = react_process(nats_server.url, data_dir, env, "--once")
        _, err = final.communicate(timeout=60)
        assert final.returncode == 0, err.decode()[-2000:]

        assert published == list(range(1, ORDERS + 1))
        assert tracking(depot) == ORDERS  # the last sequence processed
        assert {item: depot.tally(item) for item in ITEMS} == dict(Counter(items))
        parcels = [
            n
            for n in depot.recorder.select_notifications(start=1, limit=10 * ORDERS)
            if n.topic.endswith(":Parcel.Packed")
        ]
        assert len(parcels) == ORDERS and len({n.originator_id for n in parcels}) == ORDERS
        assert len(killed_at) == KILLS and all(0 < at < ORDERS for at in killed_at), killed_at
    finally:
        if publishing is not None:
            publishing.cancel()
        depot.close()
