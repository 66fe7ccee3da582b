"""Shipping's read endpoints. (No `from __future__ import annotations`: FastAPI reads
these annotations at runtime.)"""

import sqlite3
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel

from toolkit.home import ProjectionHome
from toolkit.http import ReadModel


class Shipment(BaseModel):
    shipment_id: UUID
    recipient_id: UUID
    status: Literal["awaiting_dispatch", "called_off"]
    parcels: int
    items: int
    since: str
    called_off_because: str | None = None


_COLUMNS = "shipment_id, recipient_id, status, parcels, items, since, called_off_because"


def _shipment(row: tuple[object, ...]) -> dict[str, object]:
    return dict(zip(_COLUMNS.split(", "), row, strict=True))


def router(home: ProjectionHome) -> APIRouter:
    api = APIRouter(prefix="/shipping", tags=["shipping"])
    read_model = ReadModel(home)
    Db = Annotated[sqlite3.Connection, Depends(read_model)]

    @api.get("/shipments/{shipment_id}")
    def get_shipment(shipment_id: UUID, db: Db) -> Shipment:
        row = db.execute(
            f"SELECT {_COLUMNS} FROM shipment WHERE shipment_id = ?", (str(shipment_id),)
        ).fetchone()
        if row is None:
            raise HTTPException(404, f"no shipment {shipment_id}")
        return Shipment.model_validate(_shipment(row))

    @api.get("/shipments")
    def list_shipments(
        db: Db,
        status: Literal["awaiting_dispatch", "called_off"] = "awaiting_dispatch",
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> list[Shipment]:
        rows = db.execute(
            f"SELECT {_COLUMNS} FROM shipment WHERE status = ? ORDER BY since, shipment_id LIMIT ?",
            (status, limit),
        ).fetchall()
        return [Shipment.model_validate(_shipment(row)) for row in rows]

    return api
