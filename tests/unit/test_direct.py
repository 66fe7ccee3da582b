"""toolkit.nats.direct reads the protocol as nats-py's parser does, however it is cut."""

from __future__ import annotations

import asyncio
import gc
import random
import weakref

from nats.aio.client import Client
from nats.aio.subscription import Subscription

from toolkit.nats import direct

Got = tuple[str, str, str, bytes, dict[str, str] | None, bytes | None]


def hmsg(subject: bytes, sid: int, reply: bytes, headers: bytes, body: bytes) -> bytes:
    reply_part = b" " + reply if reply else b""
    size = len(headers) + len(body)
    return b"HMSG %s %d%s %d %d\r\n%s%s\r\n" % (
        subject, sid, reply_part, len(headers), size, headers, body
    )  # fmt: skip


def protocol() -> bytes:
    """A direct subscription's messages (1) with headers, status lines and without a
    reply, mixed with an ordinary subscription's (2), MSG, +OK and one message larger
    than a read."""
    parts = []
    for i in range(40):
        ack = b"$JS.ACK.sales.c.1.%d.%d.1700000000.%d" % (i + 1, i + 1, 40 - i)
        head = b"NATS/1.0\r\nNats-Msg-Id: sales:%d\r\nX-Before: %d\r\n\r\n" % (i + 1, i)
        parts.append(hmsg(b"sales.order.%d.OrderPlaced" % i, 1, ack, head, b'{"n":%d}' % i))
        if i % 9 == 0:
            parts.append(hmsg(b"_INBOX.x.1", 1, b"", b"NATS/1.0 100 Idle Heartbeat\r\n\r\n", b""))
        if i % 11 == 0:
            parts.append(hmsg(b"other", 2, b"", b"NATS/1.0\r\nA: b\r\n\r\n", b"o%d" % i))
            parts.append(b"MSG other 2 5\r\nplain\r\n")
        if i % 13 == 0:
            parts.append(b"+OK\r\n")
    parts.append(hmsg(b"big", 1, b"", b"NATS/1.0\r\nBig: yes\r\n\r\n", b"x" * 70_000))
    parts.append(hmsg(b"_INBOX.x.2", 1, b"", b"NATS/1.0 404 No Messages\r\n\r\n", b""))
    return b"".join(parts)


async def read(data: bytes, cuts: list[int], *, fast: bool) -> tuple[list[Got], int]:
    client = Client()
    got: list[Got] = []
    dispatch = direct._dispatch(client)
    assert dispatch is not None and (dispatch.parser is not None) is True
    if not fast:  # nats-py's parse, its messages handed to the same function
        assert dispatch.parse_original is not None
        client._ps.parse = dispatch.parse_original  # type: ignore[assignment,method-assign]
    dispatch.handlers[1] = lambda s, r, d, h, b: got.append(("direct", s, r, d, h, b))
    client._subs[1] = Subscription(client, 1, "direct")
    other = Subscription(client, 2, "other")
    client._subs[2] = other
    nats_py = dispatch.original

    async def in_order(*args: object) -> None:  # where the other's messages came
        got.append(("other", "", "", b"", None, None))
        await nats_py(*args)

    dispatch.original = in_order
    start = 0
    for cut in [*cuts, len(data)]:
        await client._ps.parse(data[start:cut])
        start = cut
    for i, g in enumerate(got):
        if g[0] == "other":
            m = other._pending_queue.get_nowait()
            got[i] = ("other", m.subject, m.reply, m.data, m.headers, None)
    assert other._pending_queue.empty()
    return got, client.stats["in_msgs"]


def test_the_protocol_is_read_alike_however_it_is_cut() -> None:
    data = protocol()
    expected, count = asyncio.run(read(data, [], fast=False))
    assert [g[0] for g in expected].count("direct") == 40 + 5 + 2
    assert [g[0] for g in expected].count("other") == 2 * 4
    assert count == len(expected)
    randomly = random.Random(7)
    cuttings = [
        [],
        list(range(1, len(data), 1)),  # a byte at a time
        list(range(5, len(data), 64)),
        list(range(300, len(data), 4096)),
        *(sorted(randomly.sample(range(1, len(data)), 60)) for _ in range(20)),
    ]
    for cuts in cuttings:
        assert asyncio.run(read(data, cuts, fast=True)) == (expected, count)
        assert asyncio.run(read(data, cuts, fast=False)) == (expected, count)


def test_a_client_with_direct_subscriptions_is_freed_once_dropped() -> None:
    client = Client()
    dispatch = direct._dispatch(client)
    assert dispatch is not None and direct._dispatch(client) is dispatch
    gone = weakref.ref(client)
    del client, dispatch
    gc.collect()
    assert gone() is None
