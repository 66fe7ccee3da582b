"""The wire format: what a context puts on its stream, readable by any NATS client.

A message on a context's stream is one integration event:

- subject ``<context>.<aggregate-type>.<aggregate-id>.<event-name>``, each token encoded
  by :func:`encode_token` so that no id can change what a subject matches;
- body: a CloudEvents 1.0 JSON envelope (structured content mode), the event in ``data``;
- headers: only ``Nats-Msg-Id`` (``<context>:<log position>``, so JetStream drops
  duplicates) and the relay's ``Nats-Expected-Last-Sequence`` and
  ``Nats-Expected-Last-Msg-Id`` (which keep its messages a chain: see
  :mod:`toolkit.write.relay`).

Metadata rides in the body, not in headers, because nats-py pays per header on both
sides: thirteen ``ce-*`` headers halved publishing and reading rates (66k and 64k msg/s
against 131k and 148k with one header, 200-byte bodies, on 2 cores). One envelope also
serves the HTTP feed and webhooks unchanged.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

import msgspec

from toolkit.tracing import parse_traceparent

MSG_ID = "Nats-Msg-Id"
EXPECTED_LAST_SEQUENCE = "Nats-Expected-Last-Sequence"
EXPECTED_LAST_MSG_ID = "Nats-Expected-Last-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
"""(nats-server 2.11 on: the subject the last sequence is checked on, instead of the
message's own.)"""
SPECVERSION = "1.0"
DATACONTENTTYPE = "application/json"


_DATE_TIME = msgspec.Meta(extra_json_schema={"format": "date-time"})
"""(msgspec's JSON Schema of a datetime says only "string".)"""


class Envelope(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A CloudEvents 1.0 event in its JSON format, with the toolkit's extensions and
    CloudEvents' distributed-tracing extension (``traceparent``, ``tracestate``: W3C
    Trace Context, see :mod:`toolkit.tracing`). Absent correlation and causation ids and
    trace context are left out rather than written as null."""

    specversion: str
    id: str
    """``<context>:<log position>``: unique per source, equal to ``Nats-Msg-Id``."""
    source: str
    """The publishing context."""
    type: str
    """The contract name, e.g. ``sales.OrderPlaced``."""
    schemaversion: int
    """The contract version."""
    subject: str
    """The aggregate id, not encoded."""
    time: Annotated[datetime, _DATE_TIME]
    aggregatetype: str
    aggregateversion: int
    logposition: int
    datacontenttype: str
    correlationid: str | None = None
    """The chain the event belongs to: the trace id of the command that started it, or
    the id of its first message."""
    causationid: str | None = None
    """What caused it: the message a policy reacted to, or the request or queued command."""
    traceparent: str | None = None
    """W3C ``traceparent``: the span that saved the event (or the caller's, without
    OpenTelemetry)."""
    tracestate: str | None = None
    """W3C ``tracestate`` of the trace, when the command brought one."""
    data: Any
    """The integration event (a contract Struct when publishing, plain JSON values when
    decoded without a contract)."""


# Views of the one envelope above: each decodes only the attributes its reader needs (the
# rest, data included, is skipped, not decoded); tests/unit/test_envelope.py checks that
# each attribute is the Envelope's, of its type.


class EnvelopeHead(msgspec.Struct):
    """What a reader needs to pick a decoder and to tell the relay's messages from others;
    the rest of the envelope is skipped."""

    type: str
    schemaversion: int
    data: msgspec.Raw
    id: str | None = None
    source: str | None = None
    logposition: int | None = None
    correlationid: str | None = None
    """The chain it belongs to (a policy's effects continue it)."""
    causationid: str | None = None
    traceparent: str | None = None
    """The trace a policy's effects continue (a projection may keep it)."""
    tracestate: str | None = None


class EnvelopeAttributes(msgspec.Struct):
    """What a consumer that passes envelopes on unchanged (the HTTP feed) checks: the
    attributes CloudEvents requires of every event, and the log position the relay adds
    (to tell the relay's messages from others)."""

    specversion: str
    id: str
    source: str
    type: str
    logposition: int | None = None


class EnvelopeOrigin(msgspec.Struct):
    """Where a message comes from, as the relay checks its own last message on the stream
    against its log (and status, the relay's progress): the relay's attributes and the
    aggregate and version it carries; nothing is required, so that another publisher's
    message is told apart, not refused."""

    id: str | None = None
    source: str | None = None
    logposition: int | None = None
    subject: str | None = None
    aggregateversion: int | None = None


class EnvelopeTrace(msgspec.Struct):
    """The trace context alone, for a consumer's span of a batch (:mod:`toolkit.tracing`):
    decoded only when spans are on."""

    traceparent: str | None = None


encode_envelope = msgspec.json.Encoder().encode
decode_head = msgspec.json.Decoder(EnvelopeHead).decode
decode_attributes = msgspec.json.Decoder(EnvelopeAttributes).decode
decode_origin = msgspec.json.Decoder(EnvelopeOrigin).decode
_decode_trace = msgspec.json.Decoder(EnvelopeTrace).decode


def traceparent_of(body: bytes) -> str | None:
    """The envelope's ``traceparent`` when it is a well-formed one (a stranger's message
    may hold anything there), else None."""
    try:
        found = _decode_trace(body).traceparent
    except msgspec.DecodeError:
        return None
    return parse_traceparent(found) if found else None


def envelope_json_schema() -> dict[str, Any]:
    """The envelope's JSON Schema, self-contained (no references), for documents that
    show it (the OpenAPI schema of the feed)."""
    (_,), components = msgspec.json.schema_components((Envelope,))
    schema: dict[str, Any] = components["Envelope"]
    return schema


MAX_LOG_POSITION = 2**63 - 1
"""Logs number their events with signed 64-bit integers (SQLite, PostgreSQL's BIGINT)."""
_MSG_ID = re.compile(r"([A-Za-z][A-Za-z0-9_-]{0,63})(?:@([0-9]{1,20}))?:([0-9]{1,19})")


def log_position(msg_id: str) -> int | None:
    """The log position in a ``Nats-Msg-Id`` of the relay's form (``sales:1042`` or
    ``sales@1732456789:1042`` -> 1042), if it is one."""
    match = _MSG_ID.fullmatch(msg_id)
    if match is None:
        return None
    position = int(match[3])
    return position if 0 < position <= MAX_LOG_POSITION else None


def relay_position(
    stream: str, msg_id: str | None, source: str | None, id: str | None, position: int | None
) -> int | str:
    """The log position of a message that the relay of ``stream`` published, or why the
    message is not one of the relay's (another publisher's, or malformed).

    A message is the relay's only when its ``Nats-Msg-Id`` has the relay's form for this
    stream and its envelope's ``source``, ``id`` and ``logposition`` agree with it: only
    such messages may move a consumer's log position (see :mod:`toolkit.read.batches`) or the
    relay's own (see :mod:`toolkit.write.relay`). Any client allowed to publish on the stream can
    still copy that form exactly; keeping others from publishing there is the credentials'
    job (the README's security section)."""
    if (
        msg_id == id
        and source == stream
        and position is not None
        and 0 < position <= MAX_LOG_POSITION
        and msg_id == f"{stream}:{position}"
    ):
        return position  # the common case, without the regular expression
    if not msg_id:
        return f"it has no {MSG_ID} header"
    match = _MSG_ID.fullmatch(msg_id)
    if match is None or match[1] != stream:
        return f"its {MSG_ID} {brief(msg_id)} is not of the form the {stream} relay writes"
    number = int(match[3])
    if not 0 < number <= MAX_LOG_POSITION:
        return f"its {MSG_ID} {brief(msg_id)} names no log position"
    if source != stream or id != f"{stream}:{number}" or position != number:
        return (
            f"its envelope (source {brief(source)}, id {brief(id)}, logposition "
            f"{brief(position)}) does not agree with its {MSG_ID} {brief(msg_id)}"
        )
    return number


def relayed_head(stream: str, msg_id: str | None, body: bytes) -> EnvelopeHead | str:
    """The envelope of a message the relay of ``stream`` published (see
    :func:`relay_position`), as far as a reader needs it, or why it is not one."""
    try:
        head = decode_head(body)
    except msgspec.DecodeError as exc:
        return (
            f"its body is not a CloudEvents JSON envelope with type, schemaversion and data: {exc}"
        )
    found = relay_position(stream, msg_id, head.source, head.id, head.logposition)
    return found if isinstance(found, str) else head


def brief(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: hostile values end up in reasons."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def message_id(context: str, log_position: int, epoch: int = 0) -> str:
    """The de-duplication id of the event at a log position: stable across relay restarts.

    A relay that must publish an event again after the stream lost it (JetStream still
    remembers the lost message's id for its duplicate window) uses a new ``epoch``:
    ``sales@1732456789:1042``. The envelope's ``id`` never changes."""
    return f"{context}:{log_position}" if not epoch else f"{context}@{epoch}:{log_position}"


def message_id_context(msg_id: str) -> str:
    """The context a message id names (``sales`` of ``sales@17:1042``)."""
    return msg_id.partition(":")[0].partition("@")[0]
