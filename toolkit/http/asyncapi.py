"""``GET /asyncapi.json`` and ``GET /asyncapi.yaml``: the system's AsyncAPI document
(:mod:`toolkit.wire.asyncapi`), for teams that read the streams in other languages.

The document describes the NATS server the API itself uses, its credentials removed. It
changes only with the code and the settings, so it is made once, on first request, and
served with a strong ``ETag``: a client revalidating gets 304
(:mod:`toolkit.http.conditional`).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request, Response

from toolkit.http import problems
from toolkit.http.feed import etag_of
from toolkit.system import title_of
from toolkit.wire.asyncapi import asyncapi_document, encoded

if TYPE_CHECKING:
    from toolkit.config import Settings
    from toolkit.system import System

YAML = "application/yaml"
JSON = "application/json"
CACHE_CONTROL = "no-cache"
"""Cacheable, revalidated each time (a deploy may change it): 304 while it has not."""
_RESPONSES: dict[int | str, dict[str, Any]] = {
    304: {"description": "the document is unchanged since the ETag sent"}
}


def router(system: System, settings: Settings) -> APIRouter:
    """The two routes of the document of ``system`` on ``settings``' NATS server."""
    api = APIRouter(tags=["contracts"])

    @functools.cache
    def body(yaml: bool) -> bytes:
        document = asyncapi_document(
            system, servers=settings.nats_url, title=title_of(system, settings.system)
        )
        return encoded(document, yaml=yaml)

    def endpoint(yaml: bool) -> Callable[[Request], Awaitable[Response]]:
        async def document(request: Request) -> Response:
            problems.reject_unknown_parameters(request)
            content = body(yaml)
            headers = {"ETag": etag_of(content), "Cache-Control": CACHE_CONTROL}
            return Response(content, media_type=YAML if yaml else JSON, headers=headers)

        return document

    for form, media_type in (("json", JSON), ("yaml", YAML)):
        api.add_api_route(
            f"/asyncapi.{form}",
            endpoint(yaml=form == "yaml"),
            methods=["GET"],
            name=f"asyncapi_{form}",
            summary=f"The AsyncAPI 3.0.0 document of the system's streams, as {form.upper()}",
            response_class=Response,
            responses={200: {"content": {media_type: {}}}, **_RESPONSES},
        )
    return api
