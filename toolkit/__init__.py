"""Event-sourced bounded contexts that integrate through NATS JetStream, with replay.

The public names below are imported on first use (PEP 562), so that ``import toolkit.cli``
and the CLI's ``--help`` do not pay for nats-py and eventsourcing; ``from toolkit import
Relay`` works as it always did.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from toolkit import _moved
from toolkit.config import Settings
from toolkit.errors import (
    ConfigurationError,
    ConflictError,
    ContractError,
    InvalidCommand,
    ProjectionError,
    RelayError,
    ServerVersionError,
    ToolkitError,
)

if TYPE_CHECKING:
    from toolkit.nats.connection import Connection, Nats, connect, open_nats
    from toolkit.nats.embedded import EmbeddedServer
    from toolkit.nats.streams import StreamSpec, ensure_stream
    from toolkit.wire.contracts import ContractRegistry, IntegrationEvent, contract
    from toolkit.write.aggregate import TextAggregate
    from toolkit.write.context import BoundedContext
    from toolkit.write.published import PublishedLanguage
    from toolkit.write.relay import Relay

_LAZY = {
    "BoundedContext": "toolkit.write.context",
    "Connection": "toolkit.nats.connection",
    "ContractRegistry": "toolkit.wire.contracts",
    "EmbeddedServer": "toolkit.nats.embedded",
    "IntegrationEvent": "toolkit.wire.contracts",
    "Nats": "toolkit.nats.connection",
    "PublishedLanguage": "toolkit.write.published",
    "Relay": "toolkit.write.relay",
    "StreamSpec": "toolkit.nats.streams",
    "TextAggregate": "toolkit.write.aggregate",
    "connect": "toolkit.nats.connection",
    "contract": "toolkit.wire.contracts",
    "ensure_stream": "toolkit.nats.streams",
    "open_nats": "toolkit.nats.connection",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'toolkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later lookups do not come back here
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


_moved.install()

__all__ = [
    "BoundedContext",
    "ConfigurationError",
    "ConflictError",
    "Connection",
    "ContractError",
    "ContractRegistry",
    "EmbeddedServer",
    "IntegrationEvent",
    "InvalidCommand",
    "Nats",
    "ProjectionError",
    "PublishedLanguage",
    "Relay",
    "RelayError",
    "ServerVersionError",
    "Settings",
    "StreamSpec",
    "TextAggregate",
    "ToolkitError",
    "connect",
    "contract",
    "ensure_stream",
    "open_nats",
]
