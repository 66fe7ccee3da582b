"""``GET /contracts``: each contract version the system's contexts publish, as a JSON
Schema document (:mod:`toolkit.wire.schemas`) at a URL of its own, for teams that read
the streams in other languages and for tools that check messages.

``/contracts`` lists the contexts, ``/contracts/{context}`` a context's contract versions
and ``/contracts/{context}/{event}/v{version}`` is one version's schema
(``application/schema+json``). They are made from the classes once, when the router is,
and never change while the process runs; each is served with a strong ``ETag`` and
``no-cache``: a client keeps it and revalidates (304) since a deploy may add a version.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
from fastapi import APIRouter, HTTPException, Request, Response

from toolkit.http import problems
from toolkit.http.feed import etag_of
from toolkit.wire.contracts import event_name
from toolkit.wire.schemas import contract_schema, published, schema_text

if TYPE_CHECKING:
    from toolkit.system import System

SCHEMA = "application/schema+json"
JSON = "application/json"
CACHE_CONTROL = "no-cache"
_UNCHANGED: dict[int | str, dict[str, Any]] = {
    304: {"description": "unchanged since the ETag sent"},
    404: {"description": "no such context, contract or version (a problem document)"},
}


class _Body(NamedTuple):
    content: bytes
    etag: str


def _body(content: bytes) -> _Body:
    return _Body(content, etag_of(content))


def schema_path(context: str, name: str, version: int) -> str:
    """The URL path of a contract version's schema: ``/contracts/sales/OrderPlaced/v1``."""
    return f"/contracts/{context}/{event_name(name)}/v{version}"


def router(system: System) -> APIRouter:
    """The routes of the contract documents of ``system``."""
    api = APIRouter(tags=["contracts"])
    listed: dict[str, list[dict[str, Any]]] = {name: [] for name in system.contexts}
    documents: dict[tuple[str, str, int], _Body] = {}
    for entry in published(system):
        path = schema_path(entry.context, entry.name, entry.version)
        listed[entry.context].append({"name": entry.name, "version": entry.version, "url": path})
        key = (entry.context, event_name(entry.name), entry.version)
        documents[key] = _body(schema_text(contract_schema(entry.contract)).encode())
    contexts = {
        name: _body(orjson.dumps({"context": name, "contracts": contracts}))
        for name, contracts in listed.items()
    }
    index = _body(
        orjson.dumps(
            {
                "contexts": [
                    {"context": name, "url": f"/contracts/{name}", "contracts": contracts}
                    for name, contracts in listed.items()
                ]
            }
        )
    )

    def answer(request: Request, body: _Body | None, media_type: str, missing: str) -> Response:
        problems.reject_unknown_parameters(request)
        if body is None:
            raise HTTPException(404, missing)
        headers = {"ETag": body.etag, "Cache-Control": CACHE_CONTROL}
        return Response(body.content, media_type=media_type, headers=headers)

    @api.get(
        "/contracts",
        summary="The contexts and the contract versions each publishes, with their URLs",
        response_class=Response,
        responses={200: {"content": {JSON: {}}}, **_UNCHANGED},
    )
    async def contract_index(request: Request) -> Response:
        return answer(request, index, JSON, "")

    @api.get(
        "/contracts/{context}",
        summary="The contract versions a context publishes, with the URL of each schema",
        response_class=Response,
        responses={200: {"content": {JSON: {}}}, **_UNCHANGED},
    )
    async def context_contracts(request: Request, context: str) -> Response:
        return answer(request, contexts.get(context), JSON, f"no context {context!r}")

    @api.get(
        "/contracts/{context}/{event}/v{version}",
        summary="The JSON Schema (draft 2020-12) of a contract version's data",
        response_class=Response,
        responses={200: {"content": {SCHEMA: {}}}, **_UNCHANGED},
    )
    async def contract_version(
        request: Request, context: str, event: str, version: int
    ) -> Response:
        missing = f"{context!r} publishes no version {version} of a contract {event!r}"
        if context not in contexts:
            missing = f"no context {context!r}"
        return answer(request, documents.get((context, event, version)), SCHEMA, missing)

    return api
