"""Subscriptions whose messages are taken straight from nats-py's protocol parser.

nats-py hands a message of a subscription with a callback on through several steps: its
headers parsed in a coroutine of their own, a ``Msg`` built, put on the subscription's
queue, taken off it by the subscription's task and awaited in the callback. A stream
reader takes tens of thousands of messages a second and needs none of that: with
:func:`subscribe_direct`, a plain function of the reader's is called with the message's
parts as nats-py's parser reads them (in its ``_process_msg``, where nats-py looks the
subscription up), with the server's status lines parsed by nats-py and other headers as
the block read, for the reader to parse if and when it needs them.
Its parser's ``parse`` reads those messages where they lie in what the socket gave,
rather than through its buffer, and leaves anything else to nats-py's.

This leans on nats-py's internals (its client's ``_process_msg``, ``_process_headers``,
``_subs`` and its parser's state). Where they are not as known, or someone else replaced
``_process_msg``, the subscription is an ordinary one with a callback, which gets the
same parts from nats-py's ``Msg``: tests/integration/test_reader.py reads the same
messages both ways, and tests/unit/test_direct.py the same protocol, cut anywhere, through
both parsers.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import nats.aio.client
import nats.protocol.parser
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

log = logging.getLogger(__name__)

Handler = Callable[[str, str, bytes, "dict[str, str] | None", "bytes | None"], None]
"""Called with a message's subject, reply subject, data, headers and header block, in the
order the server sent them: the headers parsed (None when it has none) or, taken straight
from the parser, the block of a message's headers but a status line's (after its
``NATS/1.0`` line; :func:`~toolkit.nats.connection.parse_header_lines` of it, or None
when that is empty, is what nats-py would give), the headers None then. It must not
block, and should not raise (what it raises goes to the client's error callback, as a
callback's error does)."""

_HEADER_LINE = len(b"NATS/1.0")
_SPACE = 32
_AWAITING_CONTROL_LINE = getattr(nats.protocol.parser, "AWAITING_CONTROL_LINE", None)
_AWAITING_PAYLOAD = getattr(nats.protocol.parser, "AWAITING_MSG_PAYLOAD", None)
_HMSG_PATTERN: bytes | None = getattr(
    getattr(nats.protocol.parser, "HMSG_RE", None), "pattern", None
)
if _HMSG_PATTERN is not None and not _HMSG_PATTERN.startswith(b"\\AHMSG"):
    _HMSG_PATTERN = None  # not the one known: nats-py's parser alone
_HMSG = re.compile((_HMSG_PATTERN or b"HMSG").removeprefix(b"\\A"))
"""nats-py's own pattern of a message with headers, matched where a message starts
(its ``\\A`` would match only at the start of what was read)."""


class _Dispatch:
    """What one client's ``_process_msg`` (and its parser's ``parse``) became: the
    direct subscriptions' handlers by subscription id, and nats-py's own methods for
    everything else."""

    def __init__(self, client: Client) -> None:
        self.handlers: dict[int, Handler] = {}
        self.subs: dict[int, Any] = client._subs
        self.stats: dict[str, int] = client.stats
        self.original: Callable[..., Awaitable[None]] = client._process_msg
        self.process_headers: Callable[[bytes], Awaitable[dict[str, str] | None]] = (
            client._process_headers
        )
        self.error_cb: Callable[[Exception], Awaitable[None]] = client._error_cb
        self.parser: Any = None
        self.parse_original: Callable[[bytes], Awaitable[None]] | None = None
        if _parser_known(client):
            self.parser = client._ps
            self.parse_original = client._ps.parse

    async def process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        handler = self.handlers.get(sid)
        if handler is None:
            await self.original(sid, subject, reply, data, headers)
        else:
            await self.deliver(handler, sid, subject, reply, data, headers)

    async def deliver(
        self,
        handler: Handler,
        sid: int,
        subject: bytes,
        reply: bytes,
        data: bytes,
        headers: bytes | None,
    ) -> None:
        stats = self.stats
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        if sid not in self.subs:
            return  # unsubscribed meanwhile: nats-py drops it too
        hdr: dict[str, str] | None = None
        block: bytes | None = None
        if headers:
            if headers[_HEADER_LINE] == _SPACE:  # a status line (heartbeat, 404, ...)
                hdr = await self.process_headers(headers)
            elif len(headers) > _HEADER_LINE + 2:
                block = headers[_HEADER_LINE + 2 :]
        try:
            handler(subject.decode(), reply.decode(), data, hdr, block)
        except Exception as exc:  # as nats-py does with a callback's error
            await self.error_cb(exc)

    async def parse(self, data: bytes = b"") -> None:
        """nats-py's ``Parser.parse``, the direct subscriptions' messages (HMSG) read
        where they lie in what the socket gave, without copying each into the parser's
        buffer and out again; from anything else on, nats-py's own parser goes on.
        Its state is nats-py's (``state``, ``buf``, ``needed``), as it would be."""
        parser, original = self.parser, self.parse_original
        assert original is not None
        if parser.state != _AWAITING_CONTROL_LINE:  # the rest of a message read in part
            missing = parser.needed + 2 - len(parser.buf)
            if missing > len(data):
                await original(data)
                return
            await original(data[:missing])  # completes that message, and no more
            data = data[missing:]
        if parser.buf:  # the start of a control line, from the last read
            data = bytes(parser.buf) + data
            parser.buf.clear()
        handlers, subs, stats, match = self.handlers, self.subs, self.stats, _HMSG.match
        pos, end = 0, len(data)
        while pos < end:
            found = match(data, pos)
            if found is None:
                break
            subject, sid_text, _, reply, header_size, size = found.groups()
            try:
                sid = int(sid_text)
            except ValueError:
                break  # nats-py's parser says what is wrong
            handler = handlers.get(sid)
            if handler is None:
                break
            start, header_end = found.end(), found.end() + int(header_size)
            stop = start + int(size)
            if stop + 2 > end or header_end > stop:
                break  # read in part (nats-py's parser keeps it until the rest comes), or odd
            payload = data[header_end:stop]
            pos = stop + 2
            if header_end > start and (
                header_end - start <= _HEADER_LINE + 2 or data[start + _HEADER_LINE] == _SPACE
            ):  # a status line (or odd): as deliver() takes it
                await self.deliver(
                    handler, sid, subject, reply or b"", payload, data[start:header_end]
                )
                continue
            # What deliver() does, without a coroutine a message.
            stats["in_msgs"] += 1
            stats["in_bytes"] += len(payload)
            if sid not in subs:
                continue
            block = data[start + _HEADER_LINE + 2 : header_end] if header_end > start else None
            try:
                handler(subject.decode(), reply.decode() if reply else "", payload, None, block)
            except Exception as exc:
                await self.error_cb(exc)
        if pos < end:
            await original(data[pos:] if pos else data)


_ATTRIBUTE = "_toolkit_direct"
"""Where a client keeps its dispatch (on the client, not in a table here: the dispatch
holds the client's own methods, so a table's entry would keep the client alive)."""


def _installed(client: Client) -> _Dispatch | None:
    dispatch = vars(client).get(_ATTRIBUTE)
    return dispatch if isinstance(dispatch, _Dispatch) else None


def _known(client: Client) -> bool:
    """Whether ``client`` has the internals of the nats-py versions known: a
    ``_process_msg(sid, subject, reply, data, headers)`` of its class (not replaced by
    someone else), ``_process_headers``, ``_subs``, ``stats``, and headers parsed as
    :func:`~toolkit.nats.connection.parse_header_lines` does (not by the optional
    ``fast_mail_parser``)."""
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


def _parser_known(client: Client) -> bool:
    """Whether ``client``'s protocol parser is nats-py's as known: its state in
    ``state``, ``buf`` and ``needed``, its ``parse`` its class's, a message with headers
    matched by the pattern :data:`_HMSG` is made of (at its start)."""
    parser = getattr(client, "_ps", None)
    return (
        _HMSG_PATTERN is not None
        and isinstance(parser, nats.protocol.parser.Parser)
        and "parse" not in vars(parser)
        and isinstance(getattr(parser, "buf", None), bytearray)
        and isinstance(getattr(parser, "needed", None), int)
        and getattr(parser, "state", None) in (_AWAITING_CONTROL_LINE, _AWAITING_PAYLOAD)
    )


def _dispatch(client: Client) -> _Dispatch | None:
    dispatch = _installed(client)
    if dispatch is None and _known(client):
        dispatch = _Dispatch(client)
        setattr(client, _ATTRIBUTE, dispatch)
        client._process_msg = dispatch.process_msg  # type: ignore[method-assign]
        if dispatch.parser is not None:
            dispatch.parser.parse = dispatch.parse
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
        handler(msg.subject, msg.reply, msg.data, msg.headers, None)

    sub = await client.subscribe(subject, cb=through_msg)
    dispatch = _dispatch(client) if direct else None
    if dispatch is not None:
        dispatch.handlers[sub._id] = handler
    return sub


def is_direct(client: Client, sub: Subscription) -> bool:
    """Whether ``sub``'s messages are taken straight from the parser."""
    dispatch = _installed(client)
    return dispatch is not None and sub._id in dispatch.handlers


async def unsubscribe(client: Client, sub: Subscription) -> None:
    """End ``sub``; its handler is called no more."""
    dispatch = _installed(client)
    if dispatch is not None:
        dispatch.handlers.pop(sub._id, None)
    await sub.unsubscribe()
