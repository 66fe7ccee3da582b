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
    UnknownAggregate,
)

if TYPE_CHECKING:
    from toolkit.commands import CommandQueue
    from toolkit.http.app import ReadModel
    from toolkit.http.consistency import HEADER as CONSISTENCY_HEADER
    from toolkit.http.consistency import ConsistencyToken, token_for
    from toolkit.http.queued import command_queue_router
    from toolkit.http.resources import resource_router
    from toolkit.nats.connection import Connection, Nats, connect, open_nats
    from toolkit.nats.embedded import EmbeddedServer
    from toolkit.nats.streams import StreamSpec, ensure_stream
    from toolkit.react import Policy, PolicyRunner
    from toolkit.read.projection import Projection
    from toolkit.read.reader import StreamMessage
    from toolkit.read.store import ReadModelStore
    from toolkit.read.translator import Translator, UnknownEvent
    from toolkit.read.workqueue import WorkQueue, WorkStats
    from toolkit.readmodels.interface import Connection as ReadModelConnection
    from toolkit.readmodels.interface import Dialect, ReadModelHome
    from toolkit.system import System, Work, WorkFactory
    from toolkit.wire.contracts import ContractRegistry, IntegrationEvent, contract
    from toolkit.wire.envelope import Envelope
    from toolkit.wire.subjects import MAX_ID_TOKEN
    from toolkit.write.aggregate import Aggregate, TextAggregate
    from toolkit.write.context import BoundedContext
    from toolkit.write.published import PublishedLanguage
    from toolkit.write.relay import Relay

_LAZY = {
    "Aggregate": "toolkit.write.aggregate",
    "BoundedContext": "toolkit.write.context",
    "CONSISTENCY_HEADER": "toolkit.http.consistency:HEADER",
    "CommandQueue": "toolkit.commands",
    "Connection": "toolkit.nats.connection",
    "ConsistencyToken": "toolkit.http.consistency",
    "ContractRegistry": "toolkit.wire.contracts",
    "Dialect": "toolkit.readmodels.interface",
    "EmbeddedServer": "toolkit.nats.embedded",
    "Envelope": "toolkit.wire.envelope",
    "IntegrationEvent": "toolkit.wire.contracts",
    "MAX_ID_TOKEN": "toolkit.wire.subjects",
    "Nats": "toolkit.nats.connection",
    "Projection": "toolkit.read.projection",
    "PublishedLanguage": "toolkit.write.published",
    "ReadModel": "toolkit.http.app",
    "ReadModelConnection": "toolkit.readmodels.interface:Connection",
    "ReadModelHome": "toolkit.readmodels.interface",
    "ReadModelStore": "toolkit.read.store",
    "Relay": "toolkit.write.relay",
    "StreamMessage": "toolkit.read.reader",
    "StreamSpec": "toolkit.nats.streams",
    "Policy": "toolkit.react",
    "PolicyRunner": "toolkit.react",
    "System": "toolkit.system",
    "TextAggregate": "toolkit.write.aggregate",
    "Translator": "toolkit.read.translator",
    "UnknownEvent": "toolkit.read.translator",
    "Work": "toolkit.system",
    "WorkFactory": "toolkit.system",
    "WorkQueue": "toolkit.read.workqueue",
    "WorkStats": "toolkit.read.workqueue",
    "command_queue_router": "toolkit.http.queued",
    "connect": "toolkit.nats.connection",
    "contract": "toolkit.wire.contracts",
    "ensure_stream": "toolkit.nats.streams",
    "open_nats": "toolkit.nats.connection",
    "resource_router": "toolkit.http.resources",
    "token_for": "toolkit.http.consistency",
}
"""Public name -> the module that defines it (``module:name`` when it is called
otherwise there: ``Connection`` is NATS's, so a read model's is ``ReadModelConnection``)."""


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'toolkit' has no attribute {name!r}")
    module, _, attribute = where.partition(":")
    value = getattr(importlib.import_module(module), attribute or name)
    globals()[name] = value  # once: later lookups do not come back here
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


_moved.install()

__all__ = [
    "CONSISTENCY_HEADER",
    "MAX_ID_TOKEN",
    "Aggregate",
    "BoundedContext",
    "CommandQueue",
    "ConfigurationError",
    "ConflictError",
    "Connection",
    "ConsistencyToken",
    "ContractError",
    "ContractRegistry",
    "Dialect",
    "EmbeddedServer",
    "Envelope",
    "IntegrationEvent",
    "InvalidCommand",
    "Nats",
    "Policy",
    "PolicyRunner",
    "Projection",
    "ProjectionError",
    "PublishedLanguage",
    "ReadModel",
    "ReadModelConnection",
    "ReadModelHome",
    "ReadModelStore",
    "Relay",
    "RelayError",
    "ServerVersionError",
    "Settings",
    "StreamMessage",
    "StreamSpec",
    "System",
    "TextAggregate",
    "ToolkitError",
    "Translator",
    "UnknownAggregate",
    "UnknownEvent",
    "Work",
    "WorkFactory",
    "WorkQueue",
    "WorkStats",
    "command_queue_router",
    "connect",
    "contract",
    "ensure_stream",
    "open_nats",
    "resource_router",
    "token_for",
]
