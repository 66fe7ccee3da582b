"""Thin FastAPI read endpoints over projections (REST at the boundary).

Endpoints read the projection's current generation through a read-only connection; they
never call another context.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response

from toolkit import caching, feed, problems, webhooks
from toolkit.config import Settings
from toolkit.consistency import HEADER, Consistency, ConsistencyToken, InvalidToken
from toolkit.home import ProjectionHome
from toolkit.store import connect

if TYPE_CHECKING:
    from toolkit.system import System


class ReadModel:
    """A FastAPI dependency: a read-only connection to a projection's current model.

    It also answers what every read endpoint shares: an ``ETag`` derived from the model's
    checkpoints (unchanged model, same tag: ``If-None-Match`` gets 304 before the endpoint
    runs), ``Cache-Control``, the generation read (``X-Read-Model``), and read-your-writes:
    a request carrying a ``Consistency-Token`` waits, at most ``max_wait`` seconds (less
    with ``Prefer: wait=N``), until the model has applied the token's position, and
    otherwise gets 503 with ``Retry-After`` and the position reached.
    """

    def __init__(
        self, home: ProjectionHome, *, cache_control: str = "no-cache", max_wait: float = 2.0
    ) -> None:
        self.home = home
        self.cache_control = cache_control
        self.max_wait = max_wait

    async def __call__(
        self, request: Request, response: Response
    ) -> AsyncIterator[sqlite3.Connection]:
        token = _consistency_token(request)
        db, current = self._open()
        try:
            if token is not None:
                await self._wait_for(token, request, db)
            tag = caching.entity_tag(current.stem, caching.checkpoints(db))
            response.headers["ETag"] = tag
            response.headers["Cache-Control"] = self.cache_control
            response.headers["X-Read-Model"] = f"{self.home.name}/{current.stem}"
            if caching.matches(request.headers.get("if-none-match"), tag):
                raise HTTPException(304, headers=dict(response.headers))
            yield db
        finally:
            db.close()

    def _open(self) -> tuple[sqlite3.Connection, Path]:
        for _ in range(3):  # a replay may switch (and drop) the generation just read
            current = self.home.current()
            if current is None:
                break
            db = None
            try:
                db = connect(current, readonly=True)
                db.execute("SELECT 1 FROM toolkit_checkpoint LIMIT 1").fetchall()
                return db, current
            except sqlite3.Error:
                if db is not None:
                    db.close()
        raise HTTPException(
            503, f"projection {self.home.name} has no read model yet", headers={"Retry-After": "1"}
        )

    async def _wait_for(
        self, token: ConsistencyToken, request: Request, db: sqlite3.Connection
    ) -> None:
        link = getattr(request.app.state, "nats", None)
        if link is None:
            raise HTTPException(503, "consistency tokens need the API's NATS connection")
        consistency = Consistency((await link.client()).jetstream())
        wait = min(self.max_wait, _preferred_wait(request, self.max_wait))
        done, applied = await consistency.wait(
            token, lambda stream: caching.checkpoint_of(db, stream), wait
        )
        if not done:
            raise HTTPException(
                503,
                f"projection {self.home.name} has applied {token.context} up to log position "
                f"{applied.position} (stream sequence {applied.sequence}), not yet {token}",
                headers={"Retry-After": "1", HEADER: f"{token.context}:{applied.position}"},
            )


def _consistency_token(request: Request) -> ConsistencyToken | None:
    text = request.headers.get(HEADER)
    if text is None:
        return None
    try:
        return ConsistencyToken.parse(text)
    except InvalidToken as exc:
        raise HTTPException(400, str(exc)) from None


def _preferred_wait(request: Request, default: float) -> float:
    """``Prefer: wait=N`` (RFC 7240) shortens the wait for a consistency token."""
    for preference in request.headers.get("prefer", "").split(","):
        name, _, value = preference.strip().partition("=")
        if name.strip().lower() == "wait":
            try:
                return max(0.0, float(value))
            except ValueError:
                raise HTTPException(400, f"Prefer: wait={value!r} is not seconds") from None
    return default


RouterFactory = Callable[[ProjectionHome], APIRouter]


def create_app(system: System, settings: Settings) -> FastAPI:
    """The read API of every projection in ``system`` that has endpoints."""
    app = FastAPI(title="toolkit read API", version="1")
    problems.install(app)
    for name, factory in system.routers.items():
        app.include_router(factory(ProjectionHome(settings.data_dir, name)))
    nats = feed.NatsLink(settings)  # opened on first use by the feed and webhooks
    app.state.nats = nats  # and by reads that carry a consistency token
    app.include_router(feed.router(system.contexts, nats))
    app.include_router(webhooks.router(system.contexts, settings.data_dir, nats))
    return app
