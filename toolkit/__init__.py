"""Event-sourced bounded contexts that integrate through NATS JetStream, with replay."""

from toolkit.aggregate import TextAggregate
from toolkit.config import Settings
from toolkit.connection import Connection, Nats, connect, open_nats
from toolkit.context import BoundedContext
from toolkit.contracts import ContractRegistry, IntegrationEvent, contract
from toolkit.embedded import EmbeddedServer
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
from toolkit.published import PublishedLanguage
from toolkit.relay import Relay
from toolkit.streams import StreamSpec, ensure_stream

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
