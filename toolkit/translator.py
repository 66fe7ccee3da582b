"""Translators: the anti-corruption layer between a foreign stream and a projection.

A translator belongs to the consumer. It declares the foreign contracts it reads (its own
msgspec classes, with only the fields it needs) and turns each into facts in the
consuming context's own language. Event types it does not know are skipped: a tolerant
reader keeps working when the producer publishes something new.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import msgspec

from toolkit import wire
from toolkit.contracts import ContractRegistry, IntegrationEvent, contract_of
from toolkit.errors import ContractError
from toolkit.reader import StreamMessage

E = TypeVar("E", bound=IntegrationEvent)
Facts = Iterable[object] | object | None


class UnknownEvent(Exception):
    """The message's event type is not one this translator reads (it is skipped)."""


class Translator:
    """Translates one foreign stream's integration events into the consumer's facts."""

    def __init__(self, stream: str) -> None:
        self.stream = wire.check_name("stream", stream)
        self.contracts = ContractRegistry()
        self._handlers: dict[tuple[str, int], Callable[[Any], Facts]] = {}
        self._routes: dict[tuple[str, int], tuple[Callable[[bytes], Any], Callable[[Any], Facts]]]
        self._routes = {}

    def on(self, foreign: type[E]) -> Callable[[Callable[[E], Facts]], Callable[[E], Facts]]:
        """Register ``fn(foreign_event) -> fact | [facts] | None`` for a foreign contract."""
        key = contract_of(foreign)

        def register(fn: Callable[[E], Facts]) -> Callable[[E], Facts]:
            self.contracts.register(foreign)
            self._handlers[key] = fn
            self._routes[key] = (msgspec.json.Decoder(foreign).decode, fn)
            return fn

        return register

    def translate(self, message: StreamMessage) -> list[object]:
        """The facts one message means to this consumer.

        Raises :class:`UnknownEvent` for an event type it does not read, and
        :class:`~toolkit.errors.ContractError` for a message that breaks its contract.
        """
        try:
            head = wire.decode_head(message.data)
        except msgspec.DecodeError as exc:
            raise ContractError(
                f"message {message.stream}/{message.sequence} is not a CloudEvents JSON "
                f"envelope with type, schemaversion and data: {exc}"
            ) from None
        route = self._routes.get((head.type, head.schemaversion))
        if route is None:
            raise UnknownEvent(f"{head.type} v{head.schemaversion}")
        decode, handler = route
        try:
            event = decode(head.data)
        except msgspec.DecodeError:
            # Let the registry say what is wrong, in its words.
            event = self.contracts.decode(head.type, head.schemaversion, head.data)
        facts = handler(event)
        if facts is None:
            return []
        if type(facts) is list:
            return facts
        if isinstance(facts, tuple):
            return list(facts)
        return [facts]
