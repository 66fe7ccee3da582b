"""What caused an event: the message a policy reacted to (its envelope's id) or the
request or queued command that saved it, the chain it belongs to (the first message's
id, or the trace id of the command that started it) and its trace context, kept with the
events in the context's log and published as the envelope's ``causationid``,
``correlationid``, ``traceparent`` and ``tracestate`` (see :mod:`toolkit.tracing`).

eventsourcing's mapper turns a domain event's ``__dict__`` into its stored state and back.
:class:`CausalMapper` adds one key to the state while a cause is set on the saving
thread, and takes it out again when the event is read, so that aggregates never see it
(a ``Created`` event's state becomes the aggregate's ``__init__`` arguments). Only the
outbox asks for it, through :meth:`CausalMapper.decode`. A cause is set on the saving
thread by a reaction (:meth:`CausalMapper.causing`) or for a whole request or command
(:func:`caused`, a context variable, which a thread the request runs on inherits).
Events saved outside both carry no cause, and their envelopes no ids: a consumer takes
an envelope's own id as the start of its chain.

The stored cause is a list: ``[causation, correlation]``, as before traces were kept,
or ``[causation, correlation, traceparent, tracestate]``; both are read.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, NamedTuple

from eventsourcing.persistence import Mapper, StoredEvent

from toolkit import tracing
from toolkit.wire.envelope import EnvelopeHead

KEY = "__caused_by__"
"""The key of the cause in a stored event's state: no field of an event class (a dunder
name), so never an argument of an aggregate's ``__init__``."""


class Causation(NamedTuple):
    """The message (or command) that caused an event, the first of its chain, and the
    trace it belongs to (W3C ``traceparent``: the span that saved it; ``tracestate``)."""

    causation_id: str
    correlation_id: str
    traceparent: str | None = None
    tracestate: str | None = None

    @classmethod
    def of(
        cls,
        message_id: str,
        correlation_id: str | None,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> Causation:
        """Caused by message ``message_id``, of its chain (or starting one)."""
        return cls(message_id, correlation_id or message_id, traceparent, tracestate)

    def stored(self) -> list[str | None]:
        """As kept in an event's state: without a trace, the two ids alone."""
        return list(self) if self.traceparent is not None else [self[0], self[1]]


Causes = Causation | dict[int, Causation] | None
"""One cause for every event stored, or each event's by its ``id()``, or none."""

_AMBIENT: ContextVar[Causation | None] = ContextVar("toolkit_cause", default=None)


@contextlib.contextmanager
def caused(causation: Causation | None) -> Iterator[None]:
    """Events saved inside the block, on this task or any thread it hands work to (a
    FastAPI endpoint's), were caused by ``causation`` unless a reaction says otherwise:
    an HTTP request's or a queued command's cause."""
    token = _AMBIENT.set(causation)
    try:
        yield
    finally:
        _AMBIENT.reset(token)


@contextlib.contextmanager
def spanned(
    cause: Causation, name: str, *, kind: str = "internal", attributes: tracing.Attributes = None
) -> Iterator[Causation]:
    """``cause`` as the work inside names it: with spans on and ``cause`` traced, a span
    named ``name`` (a child of its traceparent) is the parent of what is saved there."""
    if cause.traceparent is None or not tracing.enabled():
        yield cause
        return
    parent = tracing.Trace(cause.traceparent, cause.tracestate)
    with tracing.span(name, parent, kind=kind, attributes=attributes) as span:
        yield cause._replace(traceparent=span.traceparent)


Continued = contextlib.AbstractContextManager[Causation]
"""The cause of a reaction's effects, given inside the block of its span."""


def continued(head: EnvelopeHead, fallback_id: str, span: str) -> Continued:
    """What the effects of a message (``head``: its envelope) name as their cause: its id
    (``fallback_id`` without one), the chain it continues (its correlation id) or starts,
    and its trace when well-formed (anyone may have published it); with spans on and the
    message traced, a span named ``span`` (a child of the envelope's) is their parent."""
    traceparent = tracing.parse_traceparent(head.traceparent) if head.traceparent else None
    tracestate = tracing.parse_tracestate(head.tracestate) if traceparent else None
    cause = Causation.of(head.id or fallback_id, head.correlationid, traceparent, tracestate)
    return spanned(cause, span, kind="consumer", attributes={"messaging.system": "nats"})


def ambient() -> Causation | None:
    """The cause set by :func:`caused` around this code, if any."""
    return _AMBIENT.get()


class CausalMapper(Mapper[Any]):
    """eventsourcing's mapper, which also stores the cause set on the saving thread."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cause = threading.local()

    @contextlib.contextmanager
    def causing(self, causation: Causes) -> Iterator[None]:
        """Events this thread stores inside the block were caused by ``causation``: one
        cause for all, or each event's (by ``id()``: a policy reacting to several
        messages in one transaction)."""
        outer = getattr(self._cause, "value", None)
        self._cause.value = causation
        try:
            yield
        finally:
            self._cause.value = outer

    def cause_of(self, domain_event: object) -> Causation | None:
        """What caused ``domain_event``, stored on this thread now (the outbox's
        hand-over asks it after a save)."""
        causes: Causes = getattr(self._cause, "value", None)
        if causes is None:
            return _AMBIENT.get()
        if isinstance(causes, Causation):
            return causes
        return causes.get(id(domain_event))

    def current(self) -> Causes:
        """The cause(s) this thread's saves are stored with now."""
        causes: Causes = getattr(self._cause, "value", None)
        return _AMBIENT.get() if causes is None else causes

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        causation = self.cause_of(domain_event)
        if causation is None:
            return super().to_stored_event(domain_event)
        state = domain_event.__dict__  # (the saving thread's own event, only while encoding)
        state[KEY] = causation.stored()
        try:
            return super().to_stored_event(domain_event)
        finally:
            del state[KEY]

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        return self.decode(stored_event)[0]

    def decode(self, stored_event: StoredEvent) -> tuple[Any, Causation | None]:
        """The domain event, without its cause, and the cause (None for an event saved
        outside a reaction)."""
        domain_event = super().to_domain_event(stored_event)
        kept = domain_event.__dict__.pop(KEY, None)
        return domain_event, None if kept is None else Causation(*kept)
