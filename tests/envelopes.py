"""Messages as a context's relay writes them (or as another publisher might), for tests
that put them on a stream or hand them to a store directly."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from toolkit import wire
from toolkit.read.reader import StreamMessage


def relayed(
    context: str,
    position: int,
    type_: str,
    data: Any,
    *,
    aggregate_id: str = "x",
    aggregate_type: str = "order",
    aggregate_version: int = 1,
    schemaversion: int = 1,
) -> tuple[str, bytes, dict[str, str]]:
    """(subject, body, headers) of the relay's message for the event at ``position``;
    ``data`` as bytes is put in the envelope as it is (JSON or not)."""
    msg_id = wire.message_id(context, position)
    envelope = wire.Envelope(
        specversion=wire.SPECVERSION,
        id=msg_id,
        source=context,
        type=type_,
        schemaversion=schemaversion,
        subject=aggregate_id,
        time=datetime(2026, 11, 24, 6, 43, 30, tzinfo=UTC),
        aggregatetype=aggregate_type,
        aggregateversion=aggregate_version,
        logposition=position,
        datacontenttype=wire.DATACONTENTTYPE,
        data=msgspec.Raw(data) if isinstance(data, bytes) else data,
    )
    subject = wire.subject(context, aggregate_type, aggregate_id, type_.rpartition(".")[2])
    return subject, wire.encode_envelope(envelope), {wire.MSG_ID: msg_id}


def stream_message(
    sequence: int, type_: str, data: Any, *, position: int | None = None, **kwargs: Any
) -> StreamMessage:
    """The relay's message for ``sales`` at ``sequence`` (log position ``position``, by
    default the same), as a reader hands it over."""
    subject, body, headers = relayed("sales", position or sequence, type_, data, **kwargs)
    return StreamMessage("sales", sequence, subject, headers, body)
