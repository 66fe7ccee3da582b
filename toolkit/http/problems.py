"""Errors at the HTTP boundary as RFC 9457 problem details (``application/problem+json``):
a client in any language gets a status, a title and a sentence that says what is wrong."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.responses import Response

MEDIA_TYPE = "application/problem+json"


def problem(status: int, detail: str, **extra: Any) -> Response:
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status}
    body["detail"] = detail
    body.update(extra)
    return Response(orjson.dumps(body), status_code=status, media_type=MEDIA_TYPE)


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 304:  # not an error: a revalidated cache entry, without a body
        return Response(status_code=304, headers=exc.headers)
    response = problem(exc.status_code, str(exc.detail))
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


async def _invalid_request(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "where": ".".join(str(part) for part in error.get("loc", ())),
            "problem": error.get("msg", "invalid"),
        }
        for error in exc.errors()
    ]
    detail = "; ".join(f"{e['where']}: {e['problem']}" for e in errors) or "invalid request"
    return problem(422, detail, errors=errors)


def reject_unknown_parameters(request: Request) -> None:
    """A misspelt query parameter is an error (400), not a silent default or a silently
    unfiltered list. The known ones are those the route declares, its dependencies'
    included."""
    route = request.scope.get("route")
    if not request.query_params or not isinstance(route, APIRoute):
        return
    known = _query_parameters(route.dependant)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise HTTPException(
            400,
            f"unknown query parameter {unknown[0]!r} (known: {', '.join(sorted(known)) or 'none'})",
        )


def _query_parameters(dependant: Dependant) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for dependency in dependant.dependencies:
        names |= _query_parameters(dependency)
    return names


def install(app: FastAPI) -> None:
    """Answer every HTTP error and invalid request of ``app`` with a problem document."""
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
