"""The reader's header parser gives what nats-py's own gives, for any header block."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from toolkit.nats.connection import parse_header_lines
from toolkit.read.reader import StreamMessage

LINE = st.lists(
    st.sampled_from(
        [
            b"Nats-Msg-Id",
            b" a",
            b"b ",
            b"c d",
            b"\t",
            b":",
            b" ",
            b"x",
            b"\xff",
            b"\xc3\xa9",
            b"\r",
            b"\n",
            b"\r\n",
        ]
    ),
    max_size=8,
).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(st.lists(LINE, max_size=6).map(b"\r\n".join))
def test_the_same_headers_as_nats_py(raw: bytes) -> None:
    assert parse_header_lines(raw) == Client._parse_header_lines(raw)


def test_a_relayed_message_header_block() -> None:
    raw = b"Nats-Msg-Id: sales:6\r\nNats-Expected-Last-Sequence: 5\r\nbad name: 1\r\n\r\n"
    assert parse_header_lines(raw) == {"Nats-Msg-Id": "sales:6", "Nats-Expected-Last-Sequence": "5"}


def unparsed(block: bytes) -> StreamMessage:
    return StreamMessage.unparsed("sales", 1, "sales.order.x.E", block, b"{}")


@settings(max_examples=500, deadline=None)
@given(
    st.lists(LINE, max_size=6).map(b"\r\n".join),
    st.booleans(),
)
def test_a_message_read_gives_its_id_and_headers_as_if_parsed_at_once(
    raw: bytes, first: bool
) -> None:
    """A reader's messages keep their header block until asked (StreamMessage.unparsed);
    the message id, read off its first line when it can be, is the parsed headers' own."""
    block = b"Nats-Msg-Id:" + raw if first else raw  # the relay's first line, and others
    parsed = parse_header_lines(block)
    assert unparsed(block).msg_id == parsed.get("Nats-Msg-Id")
    assert unparsed(block).headers == parsed
    message = unparsed(block)
    assert message.msg_id == parsed.get("Nats-Msg-Id") and message.headers == parsed
    eager = StreamMessage("sales", 1, "sales.order.x.E", parsed, b"{}")
    assert message == eager and unparsed(block) == eager and repr(message) == repr(eager)
    assert eager.msg_id == parsed.get("Nats-Msg-Id")


def test_a_relayed_message_id_is_read_off_the_first_line() -> None:
    block = b"Nats-Msg-Id: sales:6\r\nNats-Expected-Last-Sequence: 5\r\n\r\n"
    message = unparsed(block)
    assert message.msg_id == "sales:6" and message._headers is None  # not parsed for it
    assert message.headers == {"Nats-Msg-Id": "sales:6", "Nats-Expected-Last-Sequence": "5"}
    later = unparsed(b"Nats-Msg-Id: sales:6\r\nNats-Msg-Id: sales:7\r\n\r\n")
    assert later.msg_id == "sales:7"  # named twice: the last, as parsed


def test_a_stream_message_is_still_a_dataclass_to_dataclasses() -> None:
    """It was one: ``replace``, ``fields`` and ``asdict`` work on it as before, a message
    whose headers were kept as read included."""
    kept = StreamMessage.unparsed("sales", 7, "sales.x", b"Nats-Msg-Id: sales:7\r\n\r\n", b"{}")
    assert dataclasses.is_dataclass(kept)
    assert [f.name for f in dataclasses.fields(kept)] == [
        "stream", "sequence", "subject", "headers", "data"
    ]  # fmt: skip
    moved = dataclasses.replace(kept, subject="sales.y")
    assert moved == StreamMessage("sales", 7, "sales.y", {"Nats-Msg-Id": "sales:7"}, b"{}")
    assert dataclasses.asdict(kept)["headers"] == {"Nats-Msg-Id": "sales:7"}
