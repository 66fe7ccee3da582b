"""Errors at the HTTP boundary as RFC 9457 problem details (``application/problem+json``):
a client in any language gets a status, a title and a sentence that says what is wrong.

Every error is one, whoever's endpoint raised it: the toolkit's own errors of a command
(:class:`~toolkit.errors.InvalidCommand` 422, :class:`~toolkit.errors.UnknownAggregate`
and eventsourcing's ``AggregateNotFoundError`` 404, :class:`~toolkit.errors.ConflictError`
409), a number too large for a database's 64-bit integers (422), a database that is away
(503 with ``Retry-After``), and anything else (500, its traceback logged, not shown).
"""

from __future__ import annotations

import logging
import sqlite3
from http import HTTPStatus
from typing import Any

import orjson
from eventsourcing.application import AggregateNotFoundError
from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.responses import Response

from toolkit.errors import ConflictError, InvalidCommand, UnknownAggregate
from toolkit.readmodels.faults import is_infrastructure_error

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"


def problem_body(status: int, detail: str, **extra: Any) -> bytes:
    """A problem document's bytes (also for uvicorn's refusals: :mod:`toolkit.http.protocols`)."""
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status}
    body["detail"] = detail
    body.update(extra)
    return orjson.dumps(body)


def problem(
    status: int, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    body = problem_body(status, detail, **extra)
    return Response(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


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


_COMMAND_ERRORS: dict[type[Exception], int] = {
    InvalidCommand: 422,
    UnknownAggregate: 404,
    AggregateNotFoundError: 404,
    ConflictError: 409,
}


async def _command_error(_: Request, exc: Exception) -> Response:
    """A command's refusal (nothing was stored): the most specific status of its class."""
    status = next(_COMMAND_ERRORS[k] for k in type(exc).__mro__ if k in _COMMAND_ERRORS)
    if isinstance(exc, AggregateNotFoundError):  # its message is the bare id
        return problem(status, f"no aggregate {exc}")
    return problem(status, str(exc) or type(exc).__name__)


async def _out_of_range(_: Request, exc: Exception) -> Response:
    """SQLite refuses a Python int beyond 64 bits when it is bound: a client's number."""
    return problem(422, f"a number out of range: integers are 64-bit ({exc})")


async def _database_error(_: Request, exc: Exception) -> Response:
    """A database that is away (refused, lost, busy, full) is 503: try again later."""
    if _unreachable(exc):
        log.warning("database unavailable: %s", exc)
        return problem(
            503, "the database is unavailable: try again shortly", headers={"Retry-After": "5"}
        )
    log.error("a database error no client caused", exc_info=exc)  # handled: not re-raised
    return await _server_error(_, exc)


def _unreachable(exc: Exception) -> bool:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - the postgres extra is not installed
        return is_infrastructure_error(exc)
    return isinstance(exc, psycopg.OperationalError) or is_infrastructure_error(exc)


async def _server_error(_: Request, exc: Exception) -> Response:
    """Anything else: 500, still a problem document (the traceback goes to the log)."""
    return problem(500, "the server failed to answer: its log says why")


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
    """Answer every error of ``app`` with a problem document: HTTP errors, invalid
    requests, and what any endpoint's command or database raises."""
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    for kind in _COMMAND_ERRORS:
        app.add_exception_handler(kind, _command_error)
    app.add_exception_handler(OverflowError, _out_of_range)
    app.add_exception_handler(sqlite3.Error, _database_error)
    try:
        import psycopg
    except ImportError:  # pragma: no cover - the postgres extra is not installed
        pass
    else:
        app.add_exception_handler(psycopg.Error, _database_error)
    app.add_exception_handler(Exception, _server_error)
