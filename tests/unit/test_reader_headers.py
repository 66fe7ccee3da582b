"""The reader's header parser gives what nats-py's own gives, for any header block."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from toolkit.nats.connection import parse_header_lines

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
