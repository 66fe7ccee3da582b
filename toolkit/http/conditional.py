"""Conditional requests (RFC 9110 section 13): the one matcher of ``If-None-Match``.

The read-model endpoints (weak tags from the model's state, :mod:`toolkit.http.caching`)
and the event feed (strong tags from a page's bytes, :mod:`toolkit.http.feed`) only set
``ETag``; :func:`middleware` evaluates ``If-None-Match`` for every endpoint alike, once
the endpoint has answered.
"""

from __future__ import annotations

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def none_match(if_none_match: str | None, tag: str) -> bool:
    """Whether ``If-None-Match`` names ``tag`` (or is ``*``), by weak comparison (RFC 9110
    13.1.2: ``W/"x"`` and ``"x"`` match), as that header is compared: so the response
    would be the one the client has, and 304 is the answer."""
    if not if_none_match:
        return False
    candidates = [candidate.strip().removeprefix("W/") for candidate in if_none_match.split(",")]
    return "*" in candidates or tag.removeprefix("W/") in candidates


def middleware(app: ASGIApp) -> ASGIApp:
    """RFC 9110 13.2: ``If-None-Match`` is evaluated against the representation the
    request selects, so only once the endpoint has answered 2xx with an ``ETag``: a
    match on GET or HEAD becomes 304 with the same headers and no body. A resource that
    does not exist is 404 whatever the header says (``*`` or the list's tag included)."""

    async def conditional(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            await app(scope, receive, send)
            return
        asked = Headers(scope=scope).get("if-none-match")
        if not asked:
            await app(scope, receive, send)
            return
        not_modified = False

        async def sending(message: Message) -> None:
            nonlocal not_modified
            if message["type"] == "http.response.start":
                headers = MutableHeaders(raw=list(message.get("headers", [])))
                tag = headers.get("etag")
                status = message["status"]
                if 200 <= status < 300 and tag and none_match(asked, tag):
                    not_modified = True
                    for name in ("content-length", "content-type"):
                        del headers[name]
                    await send(
                        {"type": "http.response.start", "status": 304, "headers": headers.raw}
                    )
                    return
            elif message["type"] == "http.response.body" and not_modified:
                if not message.get("more_body", False):
                    await send({"type": "http.response.body", "body": b""})
                return
            await send(message)

        await app(scope, receive, sending)

    return conditional
