"""Streams of other NATS accounts, read through the JetStream API their account exports.

With one account per context, a stream lives in its context's account; another account
reaches it only through service imports of that stream's JetStream API, under a prefix
of its own (``JS.sales.API.CONSUMER.CREATE.sales.>`` for sales' ``$JS.API.CONSUMER.
CREATE.sales.>``). A client of the importing account sends each API request about an
imported stream to that prefix, and every other request (its own streams, its key-value
buckets) to ``$JS.API`` as usual: :func:`jetstream` gives a JetStream context that does
so, for the prefixes given to :func:`~toolkit.nats.connection.connect` (the setting
``TOOLKIT_NATS_IMPORTS``, see :class:`~toolkit.config.Settings`).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any, cast

from nats.aio.client import Client
from nats.js import JetStreamContext

API = "$JS.API"

_prefixes: weakref.WeakKeyDictionary[Client, Mapping[str, str]] = weakref.WeakKeyDictionary()

# After ``$JS.API.``: the operations whose next token names the stream (the longest
# first), as the server's API subjects spell them (nats-server's jetstream_api.go).
_OPERATIONS = (
    "STREAM.MSG.GET.", "STREAM.MSG.DELETE.", "STREAM.PEER.REMOVE.",
    "STREAM.LEADER.STEPDOWN.", "STREAM.INFO.", "STREAM.CREATE.", "STREAM.UPDATE.",
    "STREAM.DELETE.", "STREAM.PURGE.", "STREAM.SNAPSHOT.", "STREAM.RESTORE.",
    "CONSUMER.DURABLE.CREATE.", "CONSUMER.MSG.NEXT.", "CONSUMER.LEADER.STEPDOWN.",
    "CONSUMER.CREATE.", "CONSUMER.INFO.", "CONSUMER.DELETE.", "CONSUMER.NAMES.",
    "CONSUMER.LIST.", "CONSUMER.PAUSE.", "CONSUMER.RESET.", "CONSUMER.UNPIN.",
    "DIRECT.GET.",
)  # fmt: skip


def routed(subject: str, prefixes: Mapping[str, str]) -> str:
    """``subject``, a JetStream API request, under the prefix of the stream it is about
    when that stream is imported; unchanged otherwise."""
    if not prefixes or not subject.startswith(API + "."):
        return subject
    rest = subject[len(API) + 1 :]
    for operation in _OPERATIONS:
        if rest.startswith(operation):
            stream = rest[len(operation) :].split(".", 1)[0]
            prefix = prefixes.get(stream)
            return subject if prefix is None else f"{prefix}.{rest}"
    return subject


def remember(client: Client, prefixes: Mapping[str, str]) -> None:
    """Route ``client``'s JetStream API requests about the streams in ``prefixes``."""
    if prefixes:
        _prefixes[client] = dict(prefixes)


def api_subject(client: Client, subject: str) -> str:
    """Where ``client`` sends the JetStream API request ``subject``."""
    return routed(subject, _prefixes.get(client, {}))


def jetstream(client: Client, **options: Any) -> JetStreamContext:
    """``client.jetstream(**options)``, whose API requests about imported streams go to
    their prefixes (nats-py's own context knows one prefix for all streams)."""
    prefixes = _prefixes.get(client)
    if not prefixes:
        return client.jetstream(**options)
    return JetStreamContext(cast(Client, _Routing(client, prefixes)), **options)


class _Routing:
    """A client that sends API requests about imported streams to their prefixes: a
    JetStream context made over it routes every call (stream and consumer management,
    message gets, pull requests) without knowing it."""

    def __init__(self, client: Client, prefixes: Mapping[str, str]) -> None:
        self._client = client
        self._routes = prefixes

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def request(self, subject: str, *args: Any, **kwargs: Any) -> Any:
        return await self._client.request(routed(subject, self._routes), *args, **kwargs)

    async def publish(self, subject: str, *args: Any, **kwargs: Any) -> None:
        await self._client.publish(routed(subject, self._routes), *args, **kwargs)
