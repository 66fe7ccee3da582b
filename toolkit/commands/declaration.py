"""What a context declares to take commands through its queue: the command types (strict
msgspec Structs: unknown fields refused, no coercion) and, for each, the handler that runs
it on the context and returns a small JSON-able result.

A declaration is data, no I/O: the HTTP boundary decodes a request body with it before
anything is queued, and the workers decode the queued message with it again (a message
someone else put on the queue gets no further than a request would)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic

import msgspec
from typing_extensions import TypeVar

from toolkit.errors import ConfigurationError, InvalidCommand
from toolkit.wire import check_name
from toolkit.write.context import BoundedContext

C = TypeVar("C", bound=BoundedContext[Any])
S = TypeVar("S", bound=msgspec.Struct)

Handler = Callable[[Any, C], object]
"""``handler(command, context) -> result``: runs the command on the context (its saves
are recorded in one transaction with the command's outcome) and returns what the status
resource shows as ``result`` (anything msgspec encodes as JSON: dicts, lists, text,
numbers, UUIDs, decimals), or None."""


@dataclass(frozen=True)
class CommandType:
    """One command a queue takes: its name (a subject token and a URL segment), its
    body's type and its handler."""

    name: str
    body: type[msgspec.Struct]
    handler: Handler[Any]

    def decode(self, data: bytes) -> msgspec.Struct:
        """The command in ``data`` (JSON), strictly: a wrong type, a missing or unknown
        field is :class:`~toolkit.errors.InvalidCommand` naming it."""
        try:
            return msgspec.json.decode(data, type=self.body, strict=True)
        except msgspec.ValidationError as exc:
            raise InvalidCommand(f"{self.name}: {exc}") from None
        except msgspec.DecodeError as exc:
            raise InvalidCommand(f"{self.name}: the body is not JSON ({exc})") from None


def _kebab(name: str) -> str:
    """``RegisterCustomer`` -> ``register-customer``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", name).lower()


class CommandQueue(Generic[C]):
    """A context's queue of commands, and how each is run::

        queue = CommandQueue(Sales)

        @queue.command(RegisterCustomer)  # name: "register-customer"
        def register(command: RegisterCustomer, sales: Sales) -> dict[str, str]:
            return {"id": str(sales.register_customer(command.name, command.email))}

    The queue belongs to the context (``context_class.name``): its JetStream work-queue
    stream is ``<context>_commands``, its status bucket ``<context>_commands`` (see
    :mod:`toolkit.commands.queue`). ``ack_wait`` is how long a worker may hold a command
    before it is handed to another (a worker that died: SIGKILL, power); ``max_deliver``
    how many times a command is tried before it ends failed (a handler that keeps
    raising something other than a refusal, a conflict that keeps coming back);
    ``retry_delay`` the pause before such a retry; ``status_ttl`` how long a status (and
    so an ``Idempotency-Key``) is kept, in seconds.
    """

    def __init__(
        self,
        context: type[C],
        *,
        ack_wait: float = 30.0,
        max_deliver: int = 5,
        retry_delay: float = 0.5,
        status_ttl: float = 7 * 86400.0,
    ) -> None:
        self.context_class = context
        self.context = check_name("context", getattr(context, "name", ""))
        if ack_wait <= 0 or max_deliver < 1 or retry_delay < 0 or status_ttl <= 0:
            raise ConfigurationError(
                f"command queue of {self.context}: ack_wait and status_ttl must be above 0, "
                "max_deliver at least 1, retry_delay 0 or more"
            )
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver
        self.retry_delay = retry_delay
        self.status_ttl = status_ttl
        self._types: dict[str, CommandType] = {}

    def command(
        self, body: type[S], *, name: str | None = None
    ) -> Callable[[Callable[[S, C], object]], Callable[[S, C], object]]:
        """Register ``handler(command, context) -> result`` for commands of type ``body``
        (named ``name``, by default the type's name in kebab case)."""
        config = getattr(body, "__struct_config__", None)
        if config is None or not config.forbid_unknown_fields:
            raise ConfigurationError(
                f"command {body.__name__} must be a msgspec.Struct declared with "
                "forbid_unknown_fields=True: an unknown field is refused, not dropped"
            )
        command_name = check_name("command", name or _kebab(body.__name__))

        def register(handler: Callable[[S, C], object]) -> Callable[[S, C], object]:
            if command_name in self._types:
                raise ConfigurationError(
                    f"command {command_name} of {self.context} is declared twice"
                )
            self._types[command_name] = CommandType(command_name, body, handler)
            return handler

        return register

    @property
    def names(self) -> list[str]:
        """The commands it takes, by name."""
        return list(self._types)

    def type(self, name: str) -> CommandType:
        """The command named ``name`` (:class:`~toolkit.errors.InvalidCommand` when there
        is none: a name comes from a client or a queued message)."""
        try:
            return self._types[name]
        except KeyError:
            known = ", ".join(self._types) or "none"
            raise InvalidCommand(
                f"context {self.context} takes no command {name[:80]!r} (it takes: {known})"
            ) from None
