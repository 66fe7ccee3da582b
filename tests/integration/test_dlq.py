"""Dead letters can be listed, retried once the code is fixed, and dropped."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from nats.aio.client import Client

from contexts.sales import Sales
from projections.shipping import Shipments
from tests.conftest import BACKENDS, wait_for
from tests.flow import Where, cli_args, home_of, project_all, relay_all
from tests.integration.test_cli import toolkit
from tests.integration.test_projector import dead_letters, poisoned, shipments, three_orders
from toolkit.config import Settings
from toolkit.nats.embedded import EmbeddedServer
from toolkit.read.deadletters import retry_dead_letters
from toolkit.read.store import ReadModelStore


def store(where: Where, projection: Shipments) -> ReadModelStore:
    with home_of(where, "shipping") as home:
        current = home.current()
    assert current is not None
    return ReadModelStore(current, projection)


@BACKENDS
async def test_retry_applies_a_parked_aggregate_in_its_order(
    sales: Sales, nc: Client, read_models: Settings
) -> None:
    a, _, _ = three_orders(sales)
    await relay_all(sales, nc)
    await project_all(poisoned("park-aggregate", {str(a)}), read_models, nc)
    assert set(dead_letters(read_models)) == {2, 4}

    still_broken = store(read_models, poisoned("park-aggregate", {str(a)}))
    done, failed = retry_dead_letters(still_broken, Shipments.translators)
    still_broken.close()
    assert done == 0
    assert [(f.sequence, f.reason) for f in failed] == [
        (2, f"RuntimeError: cannot ship {a}"),
        (4, "still parked behind sequence 2"),  # not before the one that holds it
    ]

    fixed = store(read_models, Shipments())
    done, failed = retry_dead_letters(fixed, Shipments.translators)
    fixed.close()
    assert (done, failed) == (2, [])
    assert dead_letters(read_models) == {}
    assert shipments(read_models)[str(a)] == "called_off"  # placed, then cancelled


@BACKENDS
async def test_drop_gives_up_a_dead_letter_and_unparks_its_aggregate(
    sales: Sales, nc: Client, read_models: Settings
) -> None:
    a, _, _ = three_orders(sales)
    await relay_all(sales, nc)
    await project_all(poisoned("park-aggregate", {str(a)}), read_models, nc)
    s = store(read_models, Shipments())
    assert s.drop_dead_letter("sales", 2)
    s.close()
    assert set(dead_letters(read_models)) == {4}  # what was parked behind it stays


@BACKENDS
async def test_dlq_commands(
    sales: Sales, nc: Client, read_models: Settings, tmp_path: Path, nats_server: EmbeddedServer
) -> None:
    a, _, _ = three_orders(sales)
    await relay_all(sales, nc)
    await project_all(poisoned("park-aggregate", {str(a)}), read_models, nc)
    run = [*cli_args(read_models), "--nats-url", nats_server.url]
    listed = toolkit(*run, "dlq", "list", "shipping", "--json", tmp=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert [row["sequence"] for row in json.loads(listed.stdout)] == [2, 4]
    shown = toolkit(*run, "dlq", "show", "shipping", "--seq", "2", tmp=tmp_path)
    assert json.loads(shown.stdout)["reason"].startswith("RuntimeError: cannot ship")
    with home_of(read_models, "shipping") as home, home.writer_lock():
        busy = toolkit(*run, "dlq", "retry", "shipping", tmp=tmp_path)
    assert busy.returncode == 1 and "stop it first" in busy.stderr
    retried = toolkit(*run, "dlq", "retry", "shipping", tmp=tmp_path)
    assert retried.returncode == 0, retried.stderr
    assert "retried 2 dead letters, 0 still failing" in retried.stderr
    empty = toolkit(*run, "dlq", "list", "shipping", tmp=tmp_path)
    assert empty.returncode == 0 and empty.stdout == "", empty.stderr
    assert empty.stderr.strip() == "shipping has no dead letters"  # before: nothing at all
    missing = toolkit(*run, "dlq", "drop", "shipping", "--seq", "2", tmp=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "toolkit: error: no dead letter at sales sequence 2"


@BACKENDS
async def test_status_says_failing_while_a_message_is_retried(
    sales: Sales, nc: Client, read_models: Settings
) -> None:
    from contexts.system import system
    from toolkit.ops.status import collect
    from toolkit.read.projector import Projector

    a, _, _ = three_orders(sales)
    await relay_all(sales, nc)
    failing = poisoned("park-aggregate", {str(a)})
    type(failing).retries, type(failing).retry_delay = 1000, 0.05
    with home_of(read_models, "shipping") as home:
        projector = Projector(failing, ReadModelStore(home.live(), failing), nc)
    stop = asyncio.Event()
    running = asyncio.create_task(projector.run(stop))
    await wait_for(lambda: projector.stats.retries >= 2)
    report = await collect(system, read_models, nc)
    stop.set()
    await running
    projector.store.close()
    shipping = report["projections"]["shipping"]
    assert shipping["state"] == "failing"
    assert f"cannot ship {a}" in shipping["failing"]
    assert report["projections"]["billing"]["state"] == "paused"
