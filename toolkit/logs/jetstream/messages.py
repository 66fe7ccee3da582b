"""What a message of the JetStream log holds, and what the server answers a save.

A message's body is ``b"<version> <topic>\\n"`` followed by the stored event's state
(already compressed and encrypted by eventsourcing's mapper when configured); a tracking
record's is ``b"<notification id> \\n"``. Version and topic ride in the body rather than
in headers because nats-py pays for every header on both sides; a stored message keeps only
the headers its save was published with (the expected sequence, and the batch id and
number of an atomic batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from eventsourcing.persistence import DataError
from nats.aio.msg import Msg

from toolkit.logs.fence import Move

MAX_BATCH = 1000
"""The most messages JetStream takes in one atomic batch."""
EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
BATCH_ID = "Nats-Batch-Id"
BATCH_SEQUENCE = "Nats-Batch-Sequence"
BATCH_COMMIT = "Nats-Batch-Commit"
WRONG_LAST_SEQUENCE = frozenset({10071, 10164})
"""The expected last (subject) sequence did not hold: someone else wrote first."""
TRY_AGAIN = frozenset({10176, 10210})
"""An atomic batch abandoned (incomplete) or refused (too many in flight): nothing stored."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One message of a save: an event, or a tracking record (version = notification id).
    A tracking record of a :class:`~toolkit.logs.fence.FencedTracking` carries its
    ``fence``: stored only if the subject's last record is still ``fence.expected`` (no
    record when None)."""

    subject: str
    version: int
    payload: bytes
    label: str
    fence: Move | None = None


def status_of(msg: Msg) -> str | None:
    return msg.headers.get("Status") if msg.headers else None


def read_ack(msg: Msg) -> tuple[int, int | None, str]:
    """(stream sequence, JetStream error code, description) of a publish acknowledgement."""
    status = status_of(msg)
    if status == "503":
        return 0, 503, "no stream answers on this subject (was the log stream deleted?)"
    if not msg.data:
        return 0, None, ""  # the empty acknowledgement of a batch's first message
    ack = orjson.loads(msg.data)
    error = ack.get("error")
    if error:
        return 0, int(error.get("err_code", 0)), str(error.get("description", error))
    return int(ack["seq"]), None, ""


def encode_event(version: int, topic: str, state: bytes) -> bytes:
    head = b"%d %s\n" % (version, topic.encode())
    if topic.find("\n") >= 0:
        raise DataError(f"a topic must not contain a line break: {topic!r}")
    return head + state


def decode_event(payload: bytes) -> tuple[int, str, bytes]:
    try:
        end = payload.index(b"\n")
        space = payload.index(b" ", 0, end)
        return int(payload[:space]), payload[space + 1 : end].decode(), payload[end + 1 :]
    except (ValueError, UnicodeDecodeError):
        raise DataError(f"not a stored event of the JetStream log: {payload[:80]!r}") from None


def decode_version(payload: bytes) -> int:
    """The version of an event, or the notification id of a tracking record."""
    try:
        return int(payload[: payload.index(b" ")])
    except ValueError:
        raise DataError(f"not a record of the JetStream log: {payload[:80]!r}") from None
