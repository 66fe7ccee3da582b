"""Thin FastAPI read endpoints over projections (REST at the boundary).

Endpoints read the projection's current generation through a read-only connection; they
never call another context.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from fastapi import APIRouter, FastAPI, HTTPException, Response

from toolkit import feed, problems
from toolkit.config import Settings
from toolkit.home import ProjectionHome
from toolkit.store import connect

if TYPE_CHECKING:
    from toolkit.system import System


class ReadModel:
    """A FastAPI dependency: a read-only connection to a projection's current model."""

    def __init__(self, home: ProjectionHome) -> None:
        self.home = home

    def __call__(self, response: Response) -> Iterator[sqlite3.Connection]:
        db = None
        for _ in range(3):  # a replay may switch (and drop) the generation just read
            current = self.home.current()
            if current is None:
                break
            try:
                db = connect(current, readonly=True)
                db.execute("SELECT 1 FROM toolkit_checkpoint LIMIT 1").fetchall()
                break
            except sqlite3.Error:
                if db is not None:
                    db.close()
                db = None
        if db is None or current is None:
            raise HTTPException(
                503,
                f"projection {self.home.name} has no read model yet",
                headers={"Retry-After": "1"},
            )
        response.headers["X-Read-Model"] = f"{self.home.name}/{current.stem}"
        try:
            yield db
        finally:
            db.close()


RouterFactory = Callable[[ProjectionHome], APIRouter]


def create_app(system: System, settings: Settings) -> FastAPI:
    """The read API of every projection in ``system`` that has endpoints."""
    app = FastAPI(title="toolkit read API", version="1")
    problems.install(app)
    for name, factory in system.routers.items():
        app.include_router(factory(ProjectionHome(settings.data_dir, name)))
    nats = feed.NatsLink(settings)  # opened on first use by the feed and webhooks
    app.include_router(feed.router(system.contexts, nats))
    return app
