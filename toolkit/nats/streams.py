"""Streams: one JetStream stream per context, holding ``<context>.>``, provisioned
idempotently (created when missing, updated when its settings changed, left alone
otherwise)."""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    RawStreamMsg,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)
from nats.js.errors import NotFoundError

from toolkit.config import Settings
from toolkit.errors import ConfigurationError
from toolkit.wire import MSG_ID, check_name, decode_origin, relay_position


@dataclass(frozen=True)
class StreamSpec:
    """What a context's stream looks like. The stream is named after the context."""

    context: str
    replicas: int = 1
    storage: StorageType = StorageType.FILE
    duplicate_window: float = 3600.0
    """Seconds JetStream remembers message ids; longer than any relay restart."""

    @property
    def name(self) -> str:
        return check_name("context", self.context)

    @property
    def subjects(self) -> list[str]:
        return [f"{self.name}.>"]

    @classmethod
    def from_settings(cls, context: str, settings: Settings) -> StreamSpec:
        storage = StorageType.MEMORY if settings.stream_storage == "memory" else StorageType.FILE
        return cls(
            context,
            replicas=settings.stream_replicas,
            storage=storage,
            duplicate_window=settings.duplicate_window,
        )

    def config(self) -> StreamConfig:
        return StreamConfig(
            name=self.name,
            description=f"Integration events published by the {self.name} context",
            subjects=self.subjects,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            storage=self.storage,
            num_replicas=self.replicas,
            duplicate_window=self.duplicate_window,
            allow_direct=True,
        )


def _differs(info: StreamInfo, wanted: StreamConfig) -> bool:
    have = info.config
    return (
        sorted(have.subjects or []) != sorted(wanted.subjects or [])
        or (have.num_replicas or 1) != wanted.num_replicas
        or abs((have.duplicate_window or 0) - wanted.duplicate_window) > 1e-3
        or not have.allow_direct
    )


async def ensure_stream(js: JetStreamContext, spec: StreamSpec) -> StreamInfo:
    """Create the stream, or bring an existing one to ``spec``; safe to call every start."""
    wanted = spec.config()
    try:
        info = await js.stream_info(spec.name)
    except NotFoundError:
        return await js.add_stream(wanted)
    if info.config.storage != wanted.storage:
        raise ConfigurationError(
            f"stream {spec.name} uses {info.config.storage} storage but {wanted.storage} was "
            "asked for; JetStream cannot change a stream's storage in place"
        )
    if _differs(info, wanted):
        return await js.update_stream(wanted)
    return info


async def last_message(js: JetStreamContext, stream: str) -> RawStreamMsg | None:
    """The stream's last message that still exists: after messages at its end were
    deleted the stream's ``last_seq`` stays where it was, so it cannot be read by that."""
    try:
        return await js.get_msg(stream, subject=f"{stream}.>")
    except NotFoundError:
        return None


async def last_sequence(js: JetStreamContext, stream: str) -> int:
    """The sequence of the stream's last message that exists (0: none, or no stream)."""
    last = await last_message(js, stream)
    return 0 if last is None or last.seq is None else int(last.seq)


async def holds_between(js: JetStreamContext, stream: str, first: int, last: int) -> bool:
    """Whether the stream holds a message from sequence ``first`` to ``last``."""
    try:
        found = await js.get_msg(stream, seq=first, next=True)
    except NotFoundError:
        return False
    return found.seq is not None and found.seq <= last


@dataclass(frozen=True)
class Relayed:
    """A message of the stream's relay: its sequence, the log event it carries (position,
    aggregate id, aggregate version) and its message id."""

    sequence: int
    position: int
    aggregate_id: str
    aggregate_version: int
    msg_id: str


@dataclass
class Tail:
    """The end of a stream as its relay sees it."""

    last: Relayed | None
    """The relay's last message that still exists (None: there is none)."""
    before: Relayed | None = None
    """The relay's message before ``last`` (None: none was found within the probes)."""
    others: list[tuple[int, str]] = field(default_factory=list)
    """(sequence, why) of each message after ``last`` that the relay did not publish."""
    gave_up_at: int | None = None
    """Where the search for ``last`` ran out of probes without finding it."""


def relayed(stream: str, raw: RawStreamMsg) -> Relayed | str:
    """The message as one of the relay's, or why it is not one (see
    :func:`toolkit.wire.relay_position`)."""
    header = (raw.headers or {}).get(MSG_ID)
    # (nats-py's get_msg parses headers as email does: a value that is not ASCII comes
    # back as an email.header.Header)
    msg_id = None if header is None else str(header)
    try:
        origin = decode_origin(raw.data or b"")
    except msgspec.DecodeError as exc:
        return f"its body is not a CloudEvents JSON envelope: {exc}"
    position = relay_position(stream, msg_id, origin.source, origin.id, origin.logposition)
    if isinstance(position, str):
        return position
    if origin.subject is None or origin.aggregateversion is None:
        return "its envelope has no subject or aggregateversion"
    assert msg_id is not None
    return Relayed(raw.seq or 0, position, origin.subject, origin.aggregateversion, msg_id)


async def relay_tail(
    js: JetStreamContext, stream: str, *, probes: int = 1000, below: int | None = None
) -> Tail:
    """The relay's last message on ``stream`` (before sequence ``below``, if given) and
    the one before it, passing over (and naming) messages others published after it and
    sequences deleted in between, at most ``probes`` lookups. Others' messages cannot
    move the relay: it goes on after the last message it published itself."""
    tail = Tail(None)
    if below is None:
        raw = await last_message(js, stream)
        sequence = (raw.seq or 0) if raw is not None else 0
    else:
        sequence, raw = below, None  # (the loop steps to below - 1 first)
    while sequence > 0 and probes > 0:
        if raw is not None:
            found = relayed(stream, raw)
            if isinstance(found, str):
                if tail.last is None:
                    tail.others.append((sequence, found))
            elif tail.last is None:
                tail.last = found
            else:
                tail.before = found
                return tail
        sequence -= 1
        probes -= 1
        if sequence > 0 and probes > 0:
            try:
                raw = await js.get_msg(stream, sequence)
            except NotFoundError:
                raw = None  # deleted
    if tail.last is None and sequence > 0:
        tail.gave_up_at = sequence
    return tail
