"""A context's published language: which private domain events leave the context, and as
which public integration events.

Only mapped events are published; everything else stays private. A mapping may rename,
drop and reshape fields. Mappings are keyed by the stored event's topic, so the relay skips
private events without decoding them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, NamedTuple, Protocol, TypeVar
from uuid import UUID

import msgspec
from eventsourcing.persistence import Recording
from eventsourcing.utils import get_topic

from toolkit import wire
from toolkit.errors import ContractError, SubjectError
from toolkit.wire.contracts import IntegrationEvent, contract_of, event_name
from toolkit.write.causation import Causation

_encode_json = msgspec.json.encode
D = TypeVar("D")
I = TypeVar("I", bound=IntegrationEvent)  # noqa: E741


class Publishable(Protocol):
    """What the relay reads of a domain event (aggregate events of eventsourcing, with
    UUID or text ids, have all of it)."""

    @property
    def originator_id(self) -> UUID | str: ...
    @property
    def originator_version(self) -> int: ...
    @property
    def timestamp(self) -> datetime: ...


class OutgoingMessage(NamedTuple):
    """One integration event as it goes onto the stream (a tuple: the relay builds one
    per event, and a frozen dataclass costs several times as much to create)."""

    subject: str
    body: bytes
    headers: dict[str, str]
    log_position: int
    traceparent: str | None = None
    """The envelope's, for the relay's span (:mod:`toolkit.tracing`)."""


@dataclass(frozen=True)
class Mapping(Generic[D, I]):
    domain_event: type[D]
    contract: type[I]
    aggregate_type: str
    translate: Callable[[D], I | None]
    contract_name: str
    version: int
    subject_prefix: str
    """``<context>.<aggregate-type>.``"""
    subject_suffix: str
    """``.<event-name>``"""


class PublishedLanguage:
    """The mapping from a context's domain events to its integration events."""

    def __init__(self, context: str) -> None:
        self.context = wire.check_name("context", context)
        self._by_topic: dict[str, Mapping[Any, Any]] = {}

    def maps(
        self,
        domain_event: type[D],
        to: type[I],
        *,
        aggregate: str | None = None,
    ) -> Callable[[Callable[[D], I | None]], Callable[[D], I | None]]:
        """Register ``fn(domain_event) -> integration_event`` (or None to keep one private).

        ``aggregate`` is the aggregate type in the subject; by default the lower-cased name
        of the class that encloses the domain event (``Order.Placed`` -> ``order``).
        """
        name, version = contract_of(to)
        if not name.startswith(f"{self.context}."):
            raise ContractError(
                f"contract {name} cannot be published by context {self.context}: "
                f"its name must start with '{self.context}.'"
            )
        if aggregate is None:
            outer, _, _ = domain_event.__qualname__.rpartition(".")
            aggregate = (outer.rpartition(".")[2] or domain_event.__name__).lower()
        aggregate_type = wire.check_name("aggregate", aggregate)
        wire.check_name("event", event_name(name))
        topic = get_topic(domain_event)

        def register(fn: Callable[[D], I | None]) -> Callable[[D], I | None]:
            if topic in self._by_topic:
                raise ContractError(f"{topic} is already mapped in the {self.context} language")
            self._by_topic[topic] = Mapping(
                domain_event,
                to,
                aggregate_type,
                fn,
                contract_name=name,
                version=version,
                subject_prefix=f"{self.context}.{aggregate_type}.",
                subject_suffix=f".{event_name(name)}",
            )
            return fn

        return register

    def mapping(self, topic: str) -> Mapping[Any, Any] | None:
        return self._by_topic.get(topic)

    def last_published(self, recordings: Iterable[Recording[Any]]) -> int:
        """The log position of the last of ``recordings`` that leaves the context (0 for
        none): what a consistency token of their save names (private events never reach
        a projection of another context, so none is waited for)."""
        position = 0
        for recording in recordings:
            mapping = self.mapping(recording.notification.topic)
            if mapping is not None and mapping.translate(recording.domain_event) is not None:
                position = max(position, recording.notification.id)
        return position

    @property
    def topics(self) -> list[str]:
        """Topics of the domain events that are published (the rest stay private)."""
        return list(self._by_topic)

    @property
    def contracts(self) -> list[type[IntegrationEvent]]:
        return [m.contract for m in self._by_topic.values()]

    def message(
        self,
        mapping: Mapping[Any, Any],
        domain_event: Publishable,
        log_position: int,
        causation: Causation | None = None,
    ) -> OutgoingMessage | None:
        """Translate one domain event into the message that carries it, or None; its
        envelope names ``causation`` (what a policy reacted to, the command that saved
        it, the trace) when given."""
        public = mapping.translate(domain_event)
        if public is None:
            return None
        if type(public) is not mapping.contract:
            raise ContractError(
                f"mapping for {get_topic(mapping.domain_event)} returned "
                f"{type(public).__qualname__}, expected {mapping.contract.__qualname__}"
            )
        originator_id = domain_event.originator_id
        if type(originator_id) is UUID:  # str() in C (half the time): a safe token
            aggregate_id = token = _encode_json(originator_id)[1:-1].decode()
        else:
            aggregate_id = str(originator_id)
            try:
                token = wire.encode_token(aggregate_id)
            except SubjectError as exc:  # stored before saves checked ids
                raise SubjectError(
                    f"log position {log_position} cannot be published: {exc}"
                ) from None
        msg_id = f"{self.context}:{log_position}"  # wire.message_id's, without an epoch
        envelope = wire.Envelope(
            specversion=wire.SPECVERSION,
            id=msg_id,
            source=self.context,
            type=mapping.contract_name,
            schemaversion=mapping.version,
            subject=aggregate_id,
            time=domain_event.timestamp,
            aggregatetype=mapping.aggregate_type,
            aggregateversion=domain_event.originator_version,
            logposition=log_position,
            datacontenttype=wire.DATACONTENTTYPE,
            data=public,
        )
        if causation is not None:
            (
                envelope.causationid,
                envelope.correlationid,
                envelope.traceparent,
                envelope.tracestate,
            ) = causation
        return OutgoingMessage(  # (positional: a third faster than by keyword)
            mapping.subject_prefix + token + mapping.subject_suffix,
            wire.encode_envelope(envelope),
            {wire.MSG_ID: msg_id},
            log_position,
            envelope.traceparent,
        )
