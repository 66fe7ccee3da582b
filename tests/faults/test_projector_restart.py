"""A projection rides out its NATS server going away: nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
from pathlib import Path

from benchmarks.relay import fill_log
from contexts.sales import Sales
from projections.billing import Accounts
from tests.conftest import free_port, wait_for
from tests.flow import assert_equal_to_a_clean_build, relay_all
from toolkit.nats.connection import connect
from toolkit.nats.embedded import EmbeddedServer
from toolkit.read.projector import Projector
from toolkit.read.store import ReadModelStore
from toolkit.readmodels.sqlite import SQLiteHome


async def test_projector_rides_out_a_server_restart(data_dir: Path, tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path / "nats", port=free_port()).start()
    nc = await connect(server.url)
    sales = Sales(data_dir=data_dir)
    try:
        fill_log(sales, 20_000)
        head = await relay_all(sales, nc)
        store = ReadModelStore(SQLiteHome(data_dir, "billing").live(), Accounts())
        projector = Projector(Accounts(), store, nc, batch_size=100, transaction_size=100)
        stop = asyncio.Event()
        running = asyncio.create_task(projector.run(stop))
        await wait_for(lambda: projector.stats.checkpoints.get("sales", 0) > 2000)
        server.stop()
        assert projector.stats.checkpoints["sales"] < head  # stopped mid-way
        await asyncio.sleep(2)  # the fault: no server for a while
        server.start()
        await wait_for(lambda: projector.stats.checkpoints.get("sales", 0) == head, within=60)
        stop.set()
        await running
        store.close()
        await assert_equal_to_a_clean_build(data_dir, Accounts(), nc, tmp_path / "clean")
    finally:
        sales.close()
        await nc.close()
        server.stop()
