"""Event-sourced bounded contexts that integrate through NATS JetStream, with replay."""

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
from toolkit.nats.connection import Connection, Nats, connect, open_nats
from toolkit.nats.embedded import EmbeddedServer
from toolkit.nats.streams import StreamSpec, ensure_stream
from toolkit.wire.contracts import ContractRegistry, IntegrationEvent, contract
from toolkit.write.aggregate import TextAggregate
from toolkit.write.context import BoundedContext
from toolkit.write.published import PublishedLanguage
from toolkit.write.relay import Relay

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
