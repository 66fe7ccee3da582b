"""Optional bearer-token authentication for the API.

With ``TOOLKIT_API_TOKENS`` set (tokens separated by commas, so one can be rotated in
before the old one is removed), every request but the health checks must carry
``Authorization: Bearer <token>``; without it the API is open, as on a developer's
machine. Tokens are compared in constant time and never logged or echoed.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from toolkit.http import problems

OPEN_PATHS = ("/health/live", "/health/ready")


class BearerAuth:
    def __init__(self, tokens: Sequence[str]) -> None:
        self.tokens = [t.encode() for t in tokens if t]

    def allows(self, authorization: str | None) -> bool:
        scheme, _, credentials = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return False
        given = credentials.strip().encode()
        # every token is compared, so timing tells nothing about which one nearly matched
        return sum(hmac.compare_digest(given, token) for token in self.tokens) > 0

    def middleware(self, app: ASGIApp) -> ASGIApp:
        async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
                await app(scope, receive, send)
                return
            if self.allows(Headers(scope=scope).get("authorization")):
                await app(scope, receive, send)
                return
            response = problems.problem(
                401, "this API needs 'Authorization: Bearer <token>' with a token it knows"
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="toolkit"'
            await response(scope, receive, send)

        return guarded
