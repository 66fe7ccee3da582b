"""Dead letters can be listed, retried once the code is fixed, and dropped."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from nats.aio.client import Client

from contexts.sales import Sales
from projections.shipping import Shipments
from tests.conftest import wait_for
from tests.flow import project_all, relay_all
from tests.test_cli import toolkit
from tests.test_projector import dead_letters, poisoned, shipments, three_orders
from toolkit.embedded import EmbeddedServer
from toolkit.home import ProjectionHome
from toolkit.store import ReadModelStore


def store(data_dir: Path, projection: Shipments) -> ReadModelStore:
    current = ProjectionHome(data_dir, "shipping").current()
    assert current is not None
    return ReadModelStore(current, projection)


async def test_retry_applies_a_parked_aggregate_in_its_order(
    sales: Sales, nc: Client, data_dir: Path
) -> None:
    a, _, _ = three_orders(sales)
    await relay_all(sales, nc)
    await project_all(poisoned("park-aggregate", {str(a)}), data_dir, nc)
    assert set(dead_letters(data_dir)) == {2, 4}

    still_broken = store(data_dir, poisoned("park-aggregate", {str(a)}))
    done, failed = still_broken.retry_dead_letters(Shipments.translators)
    still_broken.close()
    assert done == 0
    assert [(f.sequence, f.reason) for f in failed] == [
        (2, f"RuntimeError: cannot ship {a}"),
        (4, "still parked behind sequence 2"),  # not before the one that holds it
    ]

    fixed = store(data_dir, Shipments())
    done, failed = fixed.retry_dead_letters(Shipments.translators)
    fixed.close()
    assert (done, failed) == (2, [])
    assert dead_letters(data_dir) == {}
    assert shipments(data_dir)[str(a)] == "called_off"  # placed, then cancelled


async def test_drop_gives_up_a_dead_letter_and_unparks_its_aggregate(
    sales: Sales, nc: Client, data_dir: Path
) -> None:
    a, _, _ = three_orders(sales)
    await relay_all(sales, nc)
    await project_all(poisoned("park-aggregate", {str(a)}), data_dir, nc)
    s = store(data_dir, Shipments())
    assert s.drop_dead_letter("sales", 2)
    s.close()
    assert set(dead_letters(data_dir)) == {4}  # what was parked behind it stays


async def test_dlq_commands(
    sales: Sales, nc: Client, data_dir: Path, tmp_path: Path, nats_server: EmbeddedServer
) -> None:
    a, _, _ = three_orders(sales)
    await relay_all(sales, nc)
    await project_all(poisoned("park-aggregate", {str(a)}), data_dir, nc)
    run = ["--data-dir", str(data_dir), "--nats-url", nats_server.url]
    listed = toolkit(*run, "dlq", "list", "shipping", "--json", tmp=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert [row["sequence"] for row in json.loads(listed.stdout)] == [2, 4]
    shown = toolkit(*run, "dlq", "show", "shipping", "--seq", "2", tmp=tmp_path)
    assert json.loads(shown.stdout)["reason"].startswith("RuntimeError: cannot ship")
    with ProjectionHome(data_dir, "shipping").writer_lock():
        busy = toolkit(*run, "dlq", "retry", "shipping", tmp=tmp_path)
    assert busy.returncode == 1 and "stop it first" in busy.stderr
    retried = toolkit(*run, "dlq", "retry", "shipping", tmp=tmp_path)
    assert retried.returncode == 0, retried.stderr
    assert "retried 2 dead letters, 0 still failing" in retried.stderr
    missing = toolkit(*run, "dlq", "drop", "shipping", "--seq", "2", tmp=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "toolkit: error: no dead letter at sales sequence 2"


async def test_status_says_failing_while_a_message_is_retried(
    sales: Sales, nc: Client, data_dir: Path
) -> None:
    from contexts.system import system
    from toolkit.config import Settings
    from toolkit.projector import Projector
    from toolkit.status import collect

    a, _, _ = three_orders(sales)
    await relay_all(sales, nc)
    failing = poisoned("park-aggregate", {str(a)})
    type(failing).retries, type(failing).retry_delay = 1000, 0.05
    home = ProjectionHome(data_dir, "shipping")
    projector = Projector(failing, ReadModelStore(home.live(), failing), nc)
    stop = asyncio.Event()
    running = asyncio.create_task(projector.run(stop))
    await wait_for(lambda: projector.stats.retries >= 2)
    report = await collect(system, Settings(data_dir=data_dir), nc)
    stop.set()
    await running
    projector.store.close()
    shipping = report["projections"]["shipping"]
    assert shipping["state"] == "failing"
    assert f"cannot ship {a}" in shipping["failing"]
    assert report["projections"]["billing"]["state"] == "paused"
