"""A context's commands taken asynchronously over HTTP: ``202 Accepted`` and a status
resource, the command run by the context's workers (:mod:`toolkit.commands`).

``command_queue_router(queue)`` serves, under ``/<context>/commands``:

- ``POST /<context>/commands/<command>``, the command's JSON body: validated strictly
  (422 problem document naming the field, before anything is queued), queued, and
  answered ``202 Accepted`` with ``Location: /<context>/commands/<id>`` and the status
  (``pending``) as body. With ``Idempotency-Key: <key>`` (1 to 255 printable ASCII
  characters, no space or ``"``; quotes around it are dropped) a retried request answers
  with the first one's Location and status, ``Idempotent-Replayed: true``, and queues
  nothing; the same key with another command or body is 422; a malformed key is 400.
- ``GET /<context>/commands/<id>``: the status, ``pending`` (with ``Retry-After: 1``),
  ``done`` (``consistency_token``, ``result``) or ``failed`` (``problem``, an RFC 9457
  document); 404 for an id never given or whose status expired.

NATS is the API's own connection (``app.state.nats``, as the feed's): 503 with
``Retry-After`` when it cannot be reached. The context's log is not touched here: an API
process may queue commands of a context whose log it does not hold.
"""

from __future__ import annotations

from typing import Any

import msgspec
import nats.errors
from fastapi import APIRouter, HTTPException, Request, Response

from toolkit.commands.declaration import CommandQueue, CommandType
from toolkit.commands.queue import KeyReused, QueueClient, canonical_id, idempotency_key
from toolkit.commands.status import CommandStatus
from toolkit.errors import InvalidCommand
from toolkit.http import problems
from toolkit.nats.connection import Connection

IDEMPOTENCY_HEADER = "Idempotency-Key"
_PROBLEM = {"content": {"application/problem+json": {"schema": {"type": "object"}}}}
_STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "context": {"type": "string"},
        "command": {"type": "string"},
        "state": {"type": "string", "enum": ["pending", "done", "failed"]},
        "accepted_at": {"type": "string", "format": "date-time"},
        "finished_at": {"type": "string", "format": "date-time"},
        "consistency_token": {
            "type": ["string", "null"],
            "description": "done: send it back in the Consistency-Token header of a read "
            "to see this command's effect; null when the worker that stored the command "
            "stopped before it wrote the status",
        },
        "result": {"description": "done: what the command returned"},
        "problem": {"type": "object", "description": "failed: an RFC 9457 problem document"},
    },
    "required": ["id", "context", "command", "state", "accepted_at"],
}


def command_queue_router(queue: CommandQueue[Any], *, prefix: str | None = None) -> APIRouter:
    """The routes that queue ``queue``'s commands and show their statuses (see the
    module's docstring), under ``prefix``: ``/<context>/commands`` by default;
    ``/commands`` for a router included in one whose prefix is ``/<context>``."""
    prefix = prefix if prefix is not None else f"/{queue.context}/commands"
    api = APIRouter(prefix=prefix, tags=[f"{queue.context} (queued)"])
    clients: dict[int, tuple[Connection, QueueClient]] = {}

    async def client_for(request: Request) -> QueueClient:
        link = getattr(request.app.state, "nats", None)
        if link is None:
            raise HTTPException(503, "queued commands need the API's NATS connection")
        connection = await link.connection()  # 503 when NATS cannot be reached
        known = clients.get(id(connection))
        if known is not None and known[0] is connection:
            return known[1]
        client = QueueClient(queue, connection)
        await _unless_nats_fails(client.ensure())
        clients[id(connection)] = (connection, client)
        return client

    def answer(status: CommandStatus, code: int, request: Request) -> Response:
        headers = {"Cache-Control": "no-store"}
        if code == 202:
            # next to the command's own path, wherever the router is included
            headers["Location"] = f"{request.url.path.rsplit('/', 1)[0]}/{status.id}"
        elif not status.final:
            headers["Retry-After"] = "1"
        body = msgspec.json.encode(status.public())
        return Response(body, status_code=code, media_type="application/json", headers=headers)

    def submitter(kind: CommandType) -> Any:
        async def submit(request: Request) -> Response:
            problems.reject_unknown_parameters(request)
            key = None
            header = request.headers.get(IDEMPOTENCY_HEADER)
            if header is not None:
                try:
                    key = idempotency_key(header)
                except InvalidCommand as exc:
                    raise HTTPException(400, str(exc)) from None
            command = kind.decode(await request.body())  # InvalidCommand: 422
            body = msgspec.json.encode(command)  # one form of it: the key's fingerprint
            client = await client_for(request)
            try:
                status, replayed = await _unless_nats_fails(client.submit(kind.name, body, key=key))
            except KeyReused as exc:
                raise HTTPException(422, str(exc)) from None
            response = answer(status, 202, request)
            if replayed:
                response.headers["Idempotent-Replayed"] = "true"
            return response

        submit.__name__ = f"queue_{kind.name.replace('-', '_')}"
        submit.__doc__ = (
            f"Queue command {kind.name}: 202 with the Location of its status. "
            "Send an Idempotency-Key to make a retried request the same command."
        )
        return submit

    for name in queue.names:
        kind = queue.type(name)
        api.add_api_route(
            f"/{name}",
            submitter(kind),
            methods=["POST"],
            status_code=202,
            response_model=None,
            summary=f"Queue {name}",
            openapi_extra={"requestBody": _request_body(kind)},
            responses={
                202: {
                    "description": "queued (or, with an Idempotency-Key sent before, the "
                    "first request's status); Location names its status resource",
                    "content": {"application/json": {"schema": _STATUS_SCHEMA}},
                },
                400: {"description": "a malformed Idempotency-Key", **_PROBLEM},
                422: {
                    "description": "an invalid body, or an Idempotency-Key sent before "
                    "with another command or body",
                    **_PROBLEM,
                },
                503: {"description": "NATS cannot be reached (with Retry-After)", **_PROBLEM},
            },
        )

    @api.get(
        "/{command_id}",
        response_model=None,
        summary=f"A queued command of {queue.context}: its status",
        responses={
            200: {
                "description": "pending (with Retry-After), done or failed",
                "content": {"application/json": {"schema": _STATUS_SCHEMA}},
            },
            404: {"description": "no such command (or its status expired)", **_PROBLEM},
            503: {"description": "NATS cannot be reached (with Retry-After)", **_PROBLEM},
        },
    )
    async def command_status(command_id: str, request: Request) -> Response:
        problems.reject_unknown_parameters(request)
        canonical = canonical_id(command_id)
        status = None
        if canonical is not None:
            client = await client_for(request)
            status = await _unless_nats_fails(client.status(canonical))
        if status is None or status.context != queue.context:
            raise HTTPException(404, f"no command {command_id[:64]!r} of {queue.context}")
        return answer(status, 200, request)

    return api


async def _unless_nats_fails(call: Any) -> Any:
    """``await call``, a NATS failure turned into 503 with ``Retry-After``."""
    try:
        return await call
    except (nats.errors.Error, TimeoutError) as exc:
        detail = f"NATS did not answer: {exc!s}" if str(exc) else "NATS did not answer"
        raise HTTPException(503, detail, headers={"Retry-After": "2"}) from None


def _request_body(kind: CommandType) -> dict[str, Any]:
    """The OpenAPI request body of ``kind``: its Struct's JSON Schema, the types it nests
    written out in place (the app's components are FastAPI's, from pydantic models)."""
    (schema,), components = msgspec.json.schema_components([kind.body], ref_template="{name}")

    def inline(node: Any, seen: frozenset[str]) -> Any:
        if isinstance(node, list):
            return [inline(item, seen) for item in node]
        if not isinstance(node, dict):
            return node
        name = node.get("$ref")
        if isinstance(name, str) and name in components and name not in seen:
            return inline(components[name], seen | {name})  # a recursive type: left a ref
        return {key: inline(value, seen) for key, value in node.items()}

    body = inline(schema, frozenset())
    return {"required": True, "content": {"application/json": {"schema": body}}}
