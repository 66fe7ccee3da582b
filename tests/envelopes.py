"""Messages as a context's relay writes them (or as another publisher might), for tests
that put them on a stream or hand them to a store directly: the testing kit's
:func:`~toolkit.testing.relayed_event`, with the defaults these tests share."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from toolkit.read.reader import StreamMessage
from toolkit.testing import relayed_event

TIME = datetime(2026, 11, 24, 6, 43, 30, tzinfo=UTC)


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
    event = relayed_event(
        type_,
        data,
        position=position,
        version=schemaversion,
        source=context,
        aggregate_id=aggregate_id,
        aggregate_type=aggregate_type,
        aggregate_version=aggregate_version,
        time=TIME,
    )
    return event.subject, event.body, event.headers


def stream_message(
    sequence: int, type_: str, data: Any, *, position: int | None = None, **kwargs: Any
) -> StreamMessage:
    """The relay's message for ``sales`` at ``sequence`` (log position ``position``, by
    default the same), as a reader hands it over."""
    subject, body, headers = relayed("sales", position or sequence, type_, data, **kwargs)
    return StreamMessage("sales", sequence, subject, headers, body)
