"""The request body limit: a body larger than ``TOOLKIT_MAX_BODY`` bytes is answered with
413 and a problem document before it is read into memory.

A plain ASGI middleware, so that it sits in front of every route (reads, commands, webhook
subscriptions, anything a user's router adds) and sees the body as the server hands it
over: a declared ``Content-Length`` above the limit is refused before a byte is read; a
body of unknown length (chunked) is counted as it streams through ``receive`` and refused
as soon as it passes the limit, so the process never holds more than the limit and one
chunk of it, whatever a client sends.
"""

from __future__ import annotations

import contextlib

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from toolkit.http import problems

DEFAULT_MAX_BODY = 1 << 20
"""1 MiB: far above any command or subscription this toolkit's APIs take."""


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit. An HTTPException, so
    that FastAPI's body parsing lets it through to the problem handler (any other error
    there becomes a 400); the middleware answers 413 whatever the app makes of it."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _detail(limit))


def _detail(limit: int) -> str:
    return f"the request body is larger than this API takes ({limit} bytes at most)"


class BodyLimit:
    """Refuses request bodies of more than ``limit`` bytes with 413."""

    def __init__(self, limit: int = DEFAULT_MAX_BODY) -> None:
        self.limit = limit

    def declared_too_large(self, scope: Scope) -> bool:
        """Whether the request says in advance that its body is over the limit (a
        malformed ``Content-Length`` is the server's to refuse, not this middleware's)."""
        declared = Headers(scope=scope).get("content-length", "")
        return declared.strip().isdigit() and int(declared) > self.limit

    def middleware(self, app: ASGIApp) -> ASGIApp:
        limit = self.limit

        async def limited(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            if self.declared_too_large(scope):
                await problems.problem(413, _detail(limit))(scope, receive, send)
                return
            received = 0
            exceeded = started = False

            async def counting() -> Message:
                nonlocal received, exceeded
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        exceeded = True
                        raise BodyTooLarge(limit)
                return message

            async def refuse() -> None:
                nonlocal started
                started = True
                await problems.problem(413, _detail(limit))(scope, receive, send)

            async def sending(message: Message) -> None:
                nonlocal started
                if exceeded:  # the answer is 413, whatever the app made of the error
                    if not started and message["type"] == "http.response.start":
                        await refuse()
                    return
                if message["type"] == "http.response.start":
                    started = True
                await send(message)

            with contextlib.suppress(BodyTooLarge):  # answered here
                await app(scope, counting, sending)
            if exceeded and not started:  # also when the app swallowed it and sent nothing
                await refuse()

        return limited
