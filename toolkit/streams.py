"""Streams: one JetStream stream per context, holding ``<context>.>``, provisioned
idempotently (created when missing, updated when its settings changed, left alone
otherwise)."""

from __future__ import annotations

from dataclasses import dataclass

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
from toolkit.wire import check_name


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
