"""Translators: the anti-corruption layer between a foreign stream and a projection.

A translator belongs to the consumer. It declares the foreign contracts it reads (its own
msgspec classes, with only the fields it needs) and turns each into facts in the
consuming context's own language. Event types it does not know are skipped: a tolerant
reader keeps working when the producer publishes something new. Older versions of a
contract are upcast, step by step, to the version it handles; a version it cannot read
(newer than it knows, or older with no upcaster) is a contract error, so the message is
dead-lettered with the reason instead of stopping the consumer.

A handler that takes a second argument is also given the message's envelope
(:class:`~toolkit.wire.EnvelopeHead`: its id, correlation and causation ids and trace
context), for a read model that keeps them; one that takes the event alone pays nothing
for it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import msgspec

from toolkit import wire
from toolkit.errors import ContractError
from toolkit.read.reader import StreamMessage
from toolkit.wire.contracts import ContractRegistry, IntegrationEvent, contract_of

E = TypeVar("E", bound=IntegrationEvent)
Facts = Iterable[object] | object | None


class UnknownEvent(Exception):
    """The message's event type is not one this translator reads (it is skipped)."""


class Translator:
    """Translates one foreign stream's integration events into the consumer's facts."""

    def __init__(self, stream: str) -> None:
        self.stream = wire.check_name("stream", stream)
        self.contracts = ContractRegistry()
        self._handlers: dict[tuple[str, int], Callable[..., Facts]] = {}
        self._with_envelope: set[tuple[str, int]] = set()
        self._upcasts: dict[tuple[str, int], tuple[Callable[[Any], Any], tuple[str, int]]] = {}
        self._routes: dict[tuple[str, int], _Route] = {}
        self._newest: dict[str, int] = {}  # per contract name, the newest version handled

    def on(self, foreign: type[E]) -> Callable[[Callable[..., Facts]], Callable[..., Facts]]:
        """Register ``fn(foreign_event) -> fact | [facts] | None`` for a foreign contract,
        or ``fn(foreign_event, envelope)`` to be given the envelope too."""
        key = contract_of(foreign)

        def register(fn: Callable[..., Facts]) -> Callable[..., Facts]:
            if key in self._handlers or key in self._upcasts:
                raise ContractError(f"{key[0]} v{key[1]} is already read by this translator")
            self.contracts.register(foreign)
            self._handlers[key] = fn
            if _takes_envelope(fn):
                self._with_envelope.add(key)
            self._newest[key[0]] = max(key[1], self._newest.get(key[0], 0))
            self._route()
            return fn

        return register

    def upcast(
        self, older: type[IntegrationEvent], to: type[E]
    ) -> Callable[[Callable[[Any], E]], Callable[[Any], E]]:
        """Register ``fn(older_event) -> newer_event`` for a contract's older version;
        upcasters chain (v1 -> v2 -> v3) until a version with a handler."""
        old_key, new_key = contract_of(older), contract_of(to)
        if old_key[0] != new_key[0] or old_key[1] >= new_key[1]:
            raise ContractError(
                f"an upcaster goes from a version of a contract to a newer version of the "
                f"same contract, not from {old_key[0]} v{old_key[1]} to {new_key[0]} v{new_key[1]}"
            )

        def register(fn: Callable[[Any], E]) -> Callable[[Any], E]:
            if old_key in self._handlers or old_key in self._upcasts:
                raise ContractError(f"{old_key[0]} v{old_key[1]} is already read")
            self.contracts.register(older)
            self._upcasts[old_key] = (fn, new_key)
            self._route()
            return fn

        return register

    def upcasted(self, event: IntegrationEvent) -> IntegrationEvent:
        """``event`` through the chain of upcasters, as far as a version with a handler:
        what that handler is given (``event`` itself when its version has one). A
        version this translator cannot read is a :class:`~toolkit.errors.ContractError`,
        as for a message; a type it does not read, :class:`UnknownEvent`."""
        key = contract_of(type(event))
        self.check_readable(*key)
        while key in self._upcasts:
            upcaster, key = self._upcasts[key]
            event = upcaster(event)
        return event

    def check_readable(self, name: str, version: int) -> None:
        """Raise what :meth:`translate` raises for a version of a contract it cannot
        read, or for a contract it does not read."""
        if (name, version) not in self._routes:
            raise self._unreadable(name, version)

    def _route(self) -> None:
        """Work out, for every readable (contract, version), its decoder and the chain of
        upcasters and handler that turns it into facts."""
        routes: dict[tuple[str, int], _Route] = {}
        for key in [*self._handlers, *self._upcasts]:
            steps: list[Callable[[Any], Any]] = []
            current = key
            while current in self._upcasts:
                upcaster, current = self._upcasts[current]
                steps.append(upcaster)
            handler = self._handlers.get(current)
            if handler is None:
                continue  # the chain ends nowhere yet: registered later, or never
            decoder = self.contracts.decoder(*key)
            assert decoder is not None
            routes[key] = (decoder.decode, _chain(steps, handler), current in self._with_envelope)
        self._routes = routes

    @staticmethod
    def head(message: StreamMessage) -> wire.EnvelopeHead:
        """The message's envelope, as far as a reader needs it; a
        :class:`~toolkit.errors.ContractError` when it is not one."""
        try:
            return wire.decode_head(message.data)
        except msgspec.DecodeError as exc:
            raise ContractError(
                f"message {message.stream}/{message.sequence} is not a CloudEvents JSON "
                f"envelope with type, schemaversion and data: {exc}"
            ) from None

    def translate(
        self, message: StreamMessage, head: wire.EnvelopeHead | None = None
    ) -> list[object]:
        """The facts one message means to this consumer (``head``: its envelope, when
        already decoded).

        Raises :class:`UnknownEvent` for an event type it does not read, and
        :class:`~toolkit.errors.ContractError` for a message that breaks its contract.
        """
        if head is None:
            head = self.head(message)
        route = self._routes.get((head.type, head.schemaversion))
        if route is None:
            raise self._unreadable(head.type, head.schemaversion)
        decode, handler, with_envelope = route
        try:
            event = decode(head.data)
        except msgspec.DecodeError:
            # Let the registry say what is wrong, in its words.
            event = self.contracts.decode(head.type, head.schemaversion, head.data)
        facts = handler(event, head) if with_envelope else handler(event)
        if facts is None:
            return []
        if type(facts) is list:
            return facts
        if isinstance(facts, tuple):
            return list(facts)
        return [facts]

    def _unreadable(self, name: str, version: int) -> Exception:
        newest = self._newest.get(name)
        known = newest is not None or any(key[0] == name for key in self._upcasts)
        if not known:
            return UnknownEvent(f"{name} v{version}")
        if newest is not None and version > newest:
            return ContractError(
                f"{name} v{version} is newer than this consumer reads (up to v{newest}): "
                "deploy a consumer that knows it, then retry the dead letter"
            )
        return ContractError(f"{name} v{version} has no upcaster to a version this consumer reads")


_Route = tuple[Callable[[bytes], Any], Callable[..., Facts], bool]
"""A readable version's decoder, its upcasters and handler, and whether that handler
takes the envelope too."""


def _takes_envelope(fn: Callable[..., Facts]) -> bool:
    """Whether ``fn`` takes a second positional argument (the envelope)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: the event alone
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in positional for p in parameters) >= 2 or any(
        p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters
    )


def _chain(
    steps: list[Callable[[Any], Any]], handler: Callable[..., Facts]
) -> Callable[..., Facts]:
    if not steps:
        return handler

    def upcast_then_handle(event: Any, *envelope: wire.EnvelopeHead) -> Facts:
        for step in steps:
            event = step(event)
        return handler(event, *envelope)

    return upcast_then_handle
