"""Where a relay goes on: the stream's tail, checked against the log.

The relay keeps no table of how far it got: the stream says it, in the log position of
the relay's last message there. Before it trusts that message the relay checks it
against its log (it must carry the log's event at its position, and come after the
relay's message before it), so that a stream written from another log, or a copy that
something else published in the relay's form, stops the relay rather than making it skip
or repeat events. :mod:`toolkit.ops.status` asks the same question of the log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from toolkit import wire
from toolkit.errors import RelayError
from toolkit.nats.streams import (
    Relayed,
    StreamSpec,
    ensure_stream,
    last_message,
    relay_tail,
    relayed,
)
from toolkit.write.context import BoundedContext

log = logging.getLogger("toolkit.write.relay")  # the relay's own story, told where it runs


@dataclass(frozen=True)
class ResumePoint:
    """Where the relay goes on, read from the stream."""

    sequence: int
    """The stream sequence to publish after (the stream's last, whoever published it)."""
    position: int
    """The log position of the relay's last message on the stream (0: none)."""
    own: int
    """The sequence of the relay's last message on the stream (0: none)."""


async def resume_point(
    js: JetStreamContext, stream: StreamSpec, context: BoundedContext[Any]
) -> ResumePoint:
    """Where the relay of ``context`` goes on, its stream created if missing: the stream's
    last sequence and the log position of the relay's last message on it, read one after
    the other (the relay's first publish checks that they still belong together).

    The position is read from the relay's last message that exists: when the stream
    lost its tail (deleted messages, a restore from an older snapshot), the relay
    carries the missing events again; when it was deleted and recreated, the whole
    log. Messages others published after it are passed over (consumers dead-letter
    them). That message must be the log's event at its position, and come after the
    relay's message before it: otherwise the stream was written from elsewhere, and
    the relay stops and says so rather than publish anything twice."""
    info = await ensure_stream(js, stream)
    last_seq = info.state.last_seq
    if not info.state.messages:
        return ResumePoint(last_seq, 0, 0)
    name = stream.name
    tail = await relay_tail(js, name)
    if tail.others:
        sequence, why = tail.others[0]
        log.warning(
            "relay %s: %d message(s) on stream %s after the relay's last were published "
            "by something else (sequence %d: %s); consumers dead-letter them, and only "
            "the relay should have the right to publish on '%s.>'",
            context.name, len(tail.others), name, sequence, why, name,
        )  # fmt: skip
    last = tail.last
    if last is None:
        if tail.gave_up_at is not None:
            raise RelayError(
                f"stream {name} ends in more messages that the relay did not publish "
                f"(or deleted ones) than it looks through, sequences {tail.gave_up_at} to "
                f"{tail.others[0][0]}: remove them, or point the context at a stream of "
                "its own"
            )
        return ResumePoint(last_seq, 0, 0)
    check_against_log(context, name, last)
    if tail.before is not None and tail.before.position >= last.position:
        raise RelayError(
            f"stream {name} sequence {last.sequence} repeats log position {last.position} "
            f"after sequence {tail.before.sequence} carried {tail.before.position}: it was "
            f"published again by something other than the relay; remove it (nats stream "
            f"rmm {name} {last.sequence}) and start the relay again"
        )
    if last.sequence < last_seq and not tail.others:
        log.warning(
            "relay %s: stream %s ends at sequence %d but its last message is %d (log "
            "position %d): messages were lost; carrying the log again from there",
            context.name, name, last_seq, last.sequence, last.position,
        )  # fmt: skip
    return ResumePoint(last_seq, last.position, last.sequence)


async def check_tail(js: JetStreamContext, stream: str, own: int) -> None:
    """After a wait, before publishing on: the stream must still hold the relay's last
    message, at sequence ``own``, or others' after it. Messages deleted at its end
    leave its last sequence where it was, so the next publish would chain on them as
    if they were there, and the events they carried would never be on the stream
    again: the relay starts over instead, and carries them again under new ids."""
    if not own:
        return
    # A message at or after the relay's last, looked up by sequence; the last message by
    # subject (below, for the error) costs the server a look through the stream's
    # subjects, some 1 ms at 30k orders: this runs after each rest, a command apart.
    try:
        await js.get_msg(stream, seq=own, next=True)
        return
    except nats.js.errors.NotFoundError:
        pass
    last = await last_message(js, stream)
    ends = 0 if last is None or last.seq is None else int(last.seq)
    if ends < own:
        raise RelayError(
            f"stream {stream} lost its last messages: it ends at sequence "
            f"{ends}, the relay's last message was at {own}",
            transient=True,
            lost=True,
        )


def check_against_log(context: BoundedContext[Any], stream: str, last: Relayed) -> None:
    """The relay's last message must carry the log's event at its log position."""
    head = context.recorder.max_notification_id() or 0
    if last.position > head:
        raise RelayError(
            f"stream {stream} holds events up to log position {last.position} (sequence "
            f"{last.sequence}, {wire.MSG_ID} {last.msg_id}) but the {context.name} "
            f"log ends at {head}: if something else published that message, remove it "
            f"(nats stream rmm {stream} {last.sequence}) and start the relay again; if the "
            "stream was written from another log, point the context at its own log, or "
            "at an empty stream"
        )
    held = contradicts_log(context, last)
    if held is not None:
        raise RelayError(
            f"stream {stream} sequence {last.sequence} ({wire.MSG_ID} {last.msg_id}) says "
            f"log position {last.position} is {wire.brief(last.aggregate_id)} version "
            f"{last.aggregate_version}, but the {context.name} log holds {held} "
            f"there: it was not published from this log; remove it (nats stream rmm "
            f"{stream} {last.sequence}) if something else wrote it, or point the context "
            "at its own log"
        )


async def lost(
    js: JetStreamContext, stream: str, context: BoundedContext[Any], error: RelayError
) -> bool:
    """Whether the message a duplicate acknowledgement named is gone from the stream
    (lost: publish again under new ids) rather than stored there by another relay
    racing this one (start over from the stream, ids unchanged)."""
    if error.duplicate is None:
        return True
    sequence, msg_id = error.duplicate
    try:
        stored = await js.get_msg(stream, sequence)
    except nats.js.errors.NotFoundError:
        return True
    except (nats.errors.Error, TimeoutError, OSError):
        return False  # cannot tell now: the next attempt meets the duplicate again
    found = relayed(stream, stored)
    # Stored by another relay of this log, or taken by another publisher that used
    # the id first (then only new ids get the event onto the stream).
    return (
        isinstance(found, str)
        or found.msg_id != msg_id
        or contradicts_log(context, found) is not None
    )


def contradicts_log(context: BoundedContext[Any], message: Relayed) -> str | None:
    """What the log holds at the position a relay's message names, if not the event it
    carries (same aggregate and version); None when it agrees."""
    position = message.position
    if position > (context.recorder.max_notification_id() or 0):
        return "nothing (that is past its head)"
    found = context.recorder.select_notifications(position, 1, position)
    event = found[0] if found and found[0].id == position else None
    if event is None:
        return "no event"
    if (
        not _same_id(event.originator_id, message.aggregate_id)
        or event.originator_version != message.aggregate_version
    ):
        return f"{event.originator_id} version {event.originator_version}"
    return None


def _same_id(stored: object, published: str) -> bool:
    """Whether a log's originator id is the aggregate id an envelope names (logs may give
    a UUID back as an object or as its 32 hex digits)."""
    if str(stored) == published:
        return True
    try:
        return UUID(str(stored)) == UUID(published)
    except ValueError:
        return False
