"""The log is the source of truth: when the stream loses what was relayed (its tail
deleted, or the whole stream deleted and created again), the relay carries the missing
public events again, so the stream holds each of them exactly once, in log order."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import orjson
import pytest
from nats.aio.client import Client

from contexts.sales import Sales
from projections.shipping import Shipments
from tests.conftest import Report, wait_for
from tests.flow import MUGS, place_orders, public_positions, read_all
from toolkit import Relay
from toolkit.nats.streams import StreamSpec, ensure_stream
from toolkit.read.projector import Projector
from toolkit.read.store import ReadModelStore
from toolkit.readmodels.sqlite import SQLiteHome
from toolkit.readmodels.tables import dump

pytestmark = pytest.mark.timeout(60)


async def stream_positions(nc: Client) -> list[int]:
    return [orjson.loads(m.data)["logposition"] for m in await read_all(nc)]


async def test_a_stream_that_lost_its_tail_gets_the_missing_events_again(
    report: Report, sales: Sales, nc: Client
) -> None:
    place_orders(sales, 40, note_every=3, line=MUGS)
    first = await Relay(sales, nc).run(until_head=True)
    assert first.published == 41
    js = nc.jetstream()
    for sequence in range(32, 42):  # the last ten messages go
        await js.delete_msg("sales", sequence)
    assert len(await stream_positions(nc)) == 31
    report("injected: deleted stream sequences 32-41 of 41")

    again = await Relay(sales, nc).run(until_head=True)
    assert again.republished_from == public_positions(sales)[30]
    positions = await stream_positions(nc)
    assert positions == public_positions(sales)  # each once, in log order
    ids = [m.headers["Nats-Msg-Id"] for m in await read_all(nc)]
    assert len(set(ids)) == len(ids) == 41
    assert all("@" in i for i in ids[31:]) and not any("@" in i for i in ids[:31])
    report(f"verified: {len(positions)} public events in the stream, log order, 0 lost, 0 twice")

    # Afterwards the relay goes on as usual, with nothing published twice.
    place_orders(sales, 3, note_every=3, line=MUGS)
    await Relay(sales, nc).run(until_head=True)
    assert await stream_positions(nc) == public_positions(sales)


async def test_a_deleted_and_recreated_stream_gets_the_whole_log_again(
    report: Report, sales: Sales, nc: Client
) -> None:
    place_orders(sales, 25, note_every=3, line=MUGS)
    await Relay(sales, nc).run(until_head=True)
    js = nc.jetstream()
    await js.delete_stream("sales")
    await ensure_stream(js, StreamSpec("sales"))
    report("injected: stream sales deleted and created again, empty")

    stats = await Relay(sales, nc).run(until_head=True)
    assert stats.published == 26
    assert await stream_positions(nc) == public_positions(sales)
    assert [m.sequence for m in await read_all(nc)] == list(range(1, 27))
    report("verified: 26 public events back at sequences 1-26, 0 lost, 0 twice")


async def test_a_running_relay_refills_a_stream_recreated_under_it(
    sales: Sales, nc: Client
) -> None:
    place_orders(sales, 10, note_every=3, line=MUGS)
    relay = Relay(sales, nc, retry_delay=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        await wait_for(lambda: relay.idle and relay.stats.published == 11)
        js = nc.jetstream()
        await js.delete_stream("sales")
        await ensure_stream(js, StreamSpec("sales"))
        # The next publish finds the stream empty: it starts over.
        place_orders(sales, 5, note_every=3, line=MUGS)
        head = sales.recorder.max_notification_id()
        await wait_for(lambda: relay.idle and relay.stats.position == head)
        assert relay.stats.restarts >= 1
        assert await stream_positions(nc) == public_positions(sales)
    finally:
        stop.set()
        await task


@pytest.mark.parametrize("loss", ["tail deleted", "stream recreated"])
async def test_a_consumer_past_the_new_head_says_so_and_applies_nothing_twice(
    report: Report,
    loss: str,
    sales: Sales,
    nc: Client,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    place_orders(sales, 30, note_every=3, line=MUGS)
    await Relay(sales, nc).run(until_head=True)
    home = SQLiteHome(tmp_path / "models", "shipping")
    store = ReadModelStore(home.live(), Shipments())
    stop = asyncio.Event()
    try:
        projector = Projector(Shipments(), store, nc)
        await projector.run(until_head=True)
        before = dump(store.db)
        assert store.checkpoint("sales") == 31
        js = nc.jetstream()
        if loss == "tail deleted":
            for sequence in range(22, 32):
                await js.delete_msg("sales", sequence)
        else:
            await js.delete_stream("sales")
            await ensure_stream(js, StreamSpec("sales"))
        report(f"injected: {loss} under a consumer at checkpoint 31")

        projecting = asyncio.create_task(projector.run(stop))
        await wait_for(lambda: "sales" in projector.stats.past_head)
        said = [r.getMessage() for r in caplog.records if "is past the head" in r.getMessage()]
        head = 21 if loss == "tail deleted" else 0
        assert said == [
            f"shipping: checkpoint 31 is past the head {head} of stream sales: the stream lost "
            "messages; waiting for its relay to publish them again"
        ]
        await Relay(sales, nc).run(until_head=True)  # the relay publishes them again
        await wait_for(lambda: not projector.stats.past_head, within=15)
        assert dump(store.db) == before  # nothing applied twice
        _, orders = place_orders(sales, 2, note_every=3, line=MUGS)
        await Relay(sales, nc).run(until_head=True)
        head_now = (await js.stream_info("sales")).state.last_seq
        await wait_for(lambda: store.checkpoint("sales") == head_now)
        shipped = {row[0] for row in store.db.execute("SELECT shipment_id FROM shipment")}
        assert {str(o) for o in orders} <= shipped
        report(
            f"verified: one line said so; {projector.stats.duplicates} republished events "
            "skipped by log position, 0 applied twice, new orders applied"
        )
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await projecting
        store.close()
