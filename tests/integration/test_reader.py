from __future__ import annotations

from nats.aio.client import Client

from tests.conftest import wait_for
from toolkit import StreamSpec, ensure_stream
from toolkit.read.reader import StreamReader


async def fill(nc: Client, count: int) -> None:
    js = nc.jetstream()
    await ensure_stream(js, StreamSpec("sales"))
    for i in range(count):
        await js.publish_async(f"sales.order.{i}.OrderPlaced", b"{}")
    await js.publish_async_completed()


async def test_reads_in_order_from_any_sequence(nc: Client) -> None:
    await fill(nc, 500)
    async with StreamReader(nc, "sales", start_sequence=321, batch_size=50) as reader:
        seen: list[int] = []
        while len(seen) < 180:
            seen += [m.sequence for m in await reader.next_batch(max_wait=5)]
        assert seen == list(range(321, 501))
        assert reader.pending == 0
        assert await reader.next_batch(max_wait=0.1) == []


async def test_waiting_at_the_head_delivers_new_messages(nc: Client) -> None:
    await fill(nc, 3)
    async with StreamReader(nc, "sales", start_sequence=4) as reader:
        assert await reader.next_batch(max_wait=0.05) == []
        await nc.jetstream().publish("sales.order.new.OrderPlaced", b"{}")
        batch = await reader.next_batch(max_wait=5)
        assert [(m.sequence, m.subject) for m in batch] == [(4, "sales.order.new.OrderPlaced")]


async def test_a_deleted_consumer_is_recreated_without_loss_or_repeats(nc: Client) -> None:
    await fill(nc, 3000)
    async with StreamReader(nc, "sales", batch_size=100) as reader:
        seen = [m.sequence for m in await reader.next_batch(max_wait=5)]
        assert seen
        await nc.jetstream().delete_consumer("sales", reader._consumer or "")
        while len(seen) < 3000:
            seen += [m.sequence for m in await reader.next_batch(max_wait=5)]
        assert seen == list(range(1, 3001))


async def test_back_pressure_bounds_what_is_buffered(nc: Client) -> None:
    await fill(nc, 5000)
    async with StreamReader(nc, "sales", batch_size=100, in_flight=2) as reader:
        await wait_for(lambda: reader.asked_for == 0)  # two requests of 100 served
        # The owner has not come back for more, so the reader has asked for nothing more.
        assert [m.sequence for m in await reader.next_batch()] == list(range(1, 201))
        assert reader.asked_for == 200  # taking the batch made room: two more asked for
