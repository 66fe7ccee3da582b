"""What caused an event: the message a policy reacted to (its envelope's id) and the chain
it belongs to (the first message's id), kept with the events in the context's log and
published as the envelope's ``causationid`` and ``correlationid``.

eventsourcing's mapper turns a domain event's ``__dict__`` into its stored state and back.
:class:`CausalMapper` adds one key to the state while a cause is set on the saving
thread, and takes it out again when the event is read, so that aggregates never see it
(a ``Created`` event's state becomes the aggregate's ``__init__`` arguments). Only the
outbox asks for it, through :meth:`CausalMapper.decode`. Events saved outside a reaction
carry no cause, and their envelopes no ids: a consumer takes an envelope's own id as the
start of its chain.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, NamedTuple

from eventsourcing.persistence import Mapper, StoredEvent

KEY = "__caused_by__"
"""The key of the cause in a stored event's state: no field of an event class (a dunder
name), so never an argument of an aggregate's ``__init__``."""


class Causation(NamedTuple):
    """The message that caused an event, and the first message of its chain."""

    causation_id: str
    correlation_id: str

    @classmethod
    def of(cls, message_id: str, correlation_id: str | None) -> Causation:
        """Caused by message ``message_id``, of its chain (or starting one)."""
        return cls(message_id, correlation_id or message_id)


Causes = Causation | dict[int, Causation] | None
"""One cause for every event stored, or each event's by its ``id()``, or none."""


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
        if causes is None or isinstance(causes, Causation):
            return causes
        return causes.get(id(domain_event))

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        causation = self.cause_of(domain_event)
        if causation is None:
            return super().to_stored_event(domain_event)
        state = domain_event.__dict__  # (the saving thread's own event, only while encoding)
        state[KEY] = list(causation)
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
