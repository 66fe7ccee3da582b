"""The API's routers become the app's own routes (``toolkit.http.app._include``), also a
router that includes another (sales' includes its command queue's), whose lifespan FastAPI
replaces with a merge of the two default ones; a router with a lifespan of its own is
still included as FastAPI does, and its lifespan runs."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from starlette.routing import BaseRoute

from toolkit.http.app import _include, _plain_lifespan


def _outer() -> APIRouter:
    inner = APIRouter()

    @inner.get("/{item}")
    def item(item: str) -> dict[str, str]:
        return {"inner": item}

    outer = APIRouter(prefix="/outer", tags=["outer"])
    outer.include_router(inner, prefix="/inner")

    @outer.get("/plain")
    def plain() -> dict[str, str]:
        return {"outer": "plain"}

    return outer


def _own(routes: list[BaseRoute]) -> list[str]:
    return [getattr(route, "path", type(route).__name__) for route in routes]


def test_a_router_including_another_becomes_the_apps_own_routes() -> None:
    router = _outer()
    assert _plain_lifespan(router.lifespan_context)  # FastAPI's merge of default ones
    app, nested = FastAPI(), FastAPI()
    _include(app, router)
    nested.include_router(_outer())
    assert "/outer/plain" in _own(app.router.routes)  # not behind a nested inclusion
    assert "/outer/plain" not in _own(nested.router.routes)
    with TestClient(app) as client:
        assert client.get("/outer/plain").json() == {"outer": "plain"}
        assert client.get("/outer/inner/x").json() == {"inner": "x"}
        assert client.get("/outer/nothing/x").status_code == 404
    assert app.openapi()["paths"] == nested.openapi()["paths"]


def test_a_router_with_a_lifespan_of_its_own_is_included_as_fastapi_does() -> None:
    ran: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(_: object) -> AsyncIterator[None]:
        ran.append("started")
        yield

    inner = APIRouter(lifespan=lifespan)

    @inner.get("/x")
    def x() -> dict[str, str]:
        return {"x": "x"}

    outer = APIRouter(prefix="/outer")
    outer.include_router(inner)
    assert not _plain_lifespan(inner.lifespan_context)
    assert not _plain_lifespan(outer.lifespan_context)  # a merge with one that is not
    app = FastAPI()
    _include(app, outer)
    assert "/outer/x" not in _own(app.router.routes)
    with TestClient(app) as client:
        assert client.get("/outer/x").json() == {"x": "x"}
    assert ran == ["started"]
