"""Subscriptions whose messages are taken straight from nats-py's protocol parser.

nats-py hands a message of a subscription with a callback on through several steps: its
headers parsed in a coroutine of their own, a ``Msg`` built, put on the subscription's
queue, taken off it by the subscription's task and awaited in the callback. A stream
reader takes tens of thousands of messages a second and needs none of that: with
:func:`subscribe_direct`, a plain function of the reader's is called with the message's
parts as nats-py's parser reads them (in its ``_process_msg``, where nats-py looks the
subscription up), and its headers parsed as nats-py would (its own parsing for the
server's status lines, :func:`~toolkit.nats.connection.parse_header_lines` for the rest).

This leans on nats-py's internals (its client's ``_process_msg``, ``_process_headers``
and ``_subs``). Where they are not as known, or someone else replaced ``_process_msg``,
the subscription is an ordinary one with a callback, which gets the same parts from
nats-py's ``Msg``: tests/integration/test_reader.py reads the same messages both ways.
"""

from __future__ import annotations

import inspect
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import nats.aio.client
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from toolkit.nats.connection import parse_header_lines

log = logging.getLogger(__name__)

Handler = Callable[[str, str, bytes, "dict[str, str] | None"], None]
"""Called with a message's subject, reply subject, data and headers (None when it has
none), in the order the server sent them; it must not block, and should not raise (what it
raises goes to the client's error callback, as a callback's error does)."""

_HEADER_LINE = len(b"NATS/1.0")
_SPACE = 32


class _Dispatch:
    """What one client's ``_process_msg`` became: the direct subscriptions' handlers
    by subscription id, and nats-py's own method for every other message."""

    def __init__(self, client: Client) -> None:
        self.handlers: dict[int, Handler] = {}
        self.subs: dict[int, Any] = client._subs
        self.stats: dict[str, int] = client.stats
        self.original: Callable[..., Awaitable[None]] = client._process_msg
        self.process_headers: Callable[[bytes], Awaitable[dict[str, str] | None]] = (
            client._process_headers
        )
        self.error_cb: Callable[[Exception], Awaitable[None]] = client._error_cb
        self.client = weakref.ref(client)

    async def process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        handler = self.handlers.get(sid)
        if handler is None:
            await self.original(sid, subject, reply, data, headers)
            return
        stats = self.stats
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        if sid not in self.subs:
            return  # unsubscribed meanwhile: nats-py drops it too
        hdr: dict[str, str] | None = None
        if headers:
            if headers[_HEADER_LINE] == _SPACE:  # a status line (heartbeat, 404, ...)
                hdr = await self.process_headers(headers)
            elif len(headers) > _HEADER_LINE + 2:
                hdr = parse_header_lines(headers[_HEADER_LINE + 2 :]) or None
        try:
            handler(subject.decode(), reply.decode(), data, hdr)
        except Exception as exc:  # as nats-py does with a callback's error
            await self.error_cb(exc)


_dispatches: weakref.WeakKeyDictionary[Client, _Dispatch] = weakref.WeakKeyDictionary()


def _known(client: Client) -> bool:
    """Whether ``client`` has the internals of the nats-py versions known: a
    ``_process_msg(sid, subject, reply, data, headers)`` of its class (not replaced by
    someone else), ``_process_headers``, ``_subs``, ``stats``, and headers parsed as
    :func:`parse_header_lines` does (not by the optional ``fast_mail_parser``)."""
    if "_process_msg" in vars(client) or getattr(nats.aio.client, "parse_email", None):
        return False
    try:
        parameters = list(inspect.signature(type(client)._process_msg).parameters)
    except (AttributeError, TypeError, ValueError):
        return False
    return (
        parameters == ["self", "sid", "subject", "reply", "data", "headers"]
        and callable(getattr(client, "_process_headers", None))
        and callable(getattr(client, "_error_cb", None))
        and isinstance(getattr(client, "_subs", None), dict)
        and isinstance(getattr(client, "stats", None), dict)
    )


def _dispatch(client: Client) -> _Dispatch | None:
    dispatch = _dispatches.get(client)
    if dispatch is None and _known(client):
        dispatch = _dispatches[client] = _Dispatch(client)
        client._process_msg = dispatch.process_msg  # type: ignore[method-assign]
    return dispatch


async def subscribe_direct(
    client: Client, subject: str, handler: Handler, *, direct: bool = True
) -> Subscription:
    """Subscribe ``handler`` to ``subject`` on ``client``: straight from nats-py's parser
    where it can (and ``direct``), else through an ordinary callback. Unsubscribe with
    :func:`unsubscribe`.

    ``subject`` is one nothing is sent to before this returns (a reply inbox no request
    went to yet): a message come meanwhile would take the callback's way, behind the
    ones taken straight from the parser."""

    async def through_msg(msg: Msg) -> None:
        handler(msg.subject, msg.reply, msg.data, msg.headers)

    sub = await client.subscribe(subject, cb=through_msg)
    dispatch = _dispatch(client) if direct else None
    if dispatch is not None and dispatch.client() is client:
        dispatch.handlers[sub._id] = handler
    return sub


def is_direct(client: Client, sub: Subscription) -> bool:
    """Whether ``sub``'s messages are taken straight from the parser."""
    dispatch = _dispatches.get(client)
    return dispatch is not None and sub._id in dispatch.handlers


async def unsubscribe(client: Client, sub: Subscription) -> None:
    """End ``sub``; its handler is called no more."""
    dispatch = _dispatches.get(client)
    if dispatch is not None:
        dispatch.handlers.pop(sub._id, None)
    await sub.unsubscribe()
