from __future__ import annotations

from nats.aio.client import Client

from tests.conftest import wait_for
from toolkit import StreamSpec, ensure_stream
from toolkit.nats.connection import parse_header_lines
from toolkit.nats.direct import is_direct, subscribe_direct, unsubscribe
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


async def read_all(
    nc: Client, count: int, *, direct: bool
) -> list[tuple[int, str, dict[str, str], bytes]]:
    reader = StreamReader(nc, "sales", batch_size=64)
    reader.direct = direct
    async with reader:
        assert reader._sub is not None and is_direct(nc, reader._sub) == direct
        seen: list[tuple[int, str, dict[str, str], bytes]] = []
        while len(seen) < count:
            seen += [(m.sequence, m.subject, m.headers, m.data) for m in await reader.next_batch(5)]
        assert await reader.next_batch(max_wait=1.2) == []  # a request ends (404/408), heartbeats
    return seen


async def test_messages_taken_from_the_parser_are_those_a_callback_gets(nc: Client) -> None:
    """The reader takes its messages straight from nats-py's parser
    (toolkit.nats.direct): the same messages, headers and order as through nats-py's
    subscription callback, which it falls back to."""
    js = nc.jetstream()
    await ensure_stream(js, StreamSpec("sales"))
    for i in range(300):
        headers = {"Nats-Msg-Id": f"sales:{i + 1}", "X-Before": str(i)}
        if i % 3 == 0:
            headers |= {"X-Before-Id": f"sales:{i}", "X-Text": "välue é"}
        if i % 7 == 0:
            headers = {}
        await js.publish_async(f"sales.order.{i}.OrderPlaced", b'{"n": %d}' % i, headers=headers)
    await js.publish_async_completed()
    direct = await read_all(nc, 300, direct=True)
    assert direct == await read_all(nc, 300, direct=False)
    assert [s for s, *_ in direct] == list(range(1, 301))
    assert direct[3][2]["X-Text"] == "välue é" and direct[7][2] == {}


async def test_headers_taken_from_the_parser_are_parsed_as_nats_py_does(nc: Client) -> None:
    got: list[dict[str, str] | None] = []
    sub = await subscribe_direct(
        nc,
        nc.new_inbox(),
        lambda s, r, d, h, b: got.append(h if b is None else parse_header_lines(b) or None),
    )
    assert is_direct(nc, sub)
    raws = [
        b"NATS/1.0\r\nNats-Msg-Id: sales:1\r\nNats-Expected-Last-Sequence: 0\r\n\r\n",
        b"NATS/1.0\r\nName:Value\r\nTabbed:\tx \r\nbad name: y\r\n\xff\xfe: z\r\nno colon\r\n\r\n",
        b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 10\r\nNats-Last-Stream: 12\r\n\r\n",
        b"NATS/1.0 404 No Messages\r\n\r\n",
        b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 1\r\n\r\n",
        b"NATS/1.0 503\r\n\r\n",
        b"NATS/1.0\r\n\r\n",
        b"NATS/1.0\r\nK: v\xe9\r\n\r\n",
    ]
    for raw in raws:
        await nc._process_msg(sub._id, sub.subject.encode(), b"", b"", raw)
    await unsubscribe(nc, sub)
    assert got == [await nc._process_headers(raw) for raw in raws]
