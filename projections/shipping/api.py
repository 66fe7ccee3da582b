"""Shipping's read endpoints: the shipment table as a resource. (No `from __future__
import annotations`: FastAPI reads these annotations at runtime.)"""

from typing import Literal
from uuid import UUID

from fastapi import APIRouter
from pydantic import BaseModel

from toolkit import resource_router

Status = Literal["awaiting_dispatch", "called_off"]


class Shipment(BaseModel):
    shipment_id: UUID
    recipient_id: UUID
    status: Status
    parcels: int
    items: int
    since: str
    called_off_because: str | None = None


def router(home: object) -> APIRouter:
    """``GET /shipping/shipments/{shipment_id}`` and ``GET /shipping/shipments`` (by
    ``since``, filtered by ``status`` and ``recipient_id``, a page at a time)."""
    return resource_router(
        home,
        path="/shipping/shipments",
        table="shipment",
        model=Shipment,
        key="shipment_id",
        order_by="since",
        filters={"status": Status, "recipient_id": UUID},
        max_limit=500,
    )


DispatchStatus = Literal["requested", "dispatched"]


class Dispatch(BaseModel):
    """A shipment as the shipping context keeps it (the ``dispatches`` read model, from
    shipping's stream): its id is its order's."""

    shipment_id: UUID
    order_id: UUID
    parcels: int
    status: DispatchStatus
    requested_at: str
    carrier: str | None = None
    dispatched_at: str | None = None


def dispatches(home: object) -> APIRouter:
    """``GET /shipping/dispatches/{shipment_id}`` and ``GET /shipping/dispatches`` (by
    ``requested_at``, filtered by ``status``): where a dispatch's consistency token
    (``shipping:<position>``) is read back."""
    return resource_router(
        home,
        path="/shipping/dispatches",
        table="dispatch",
        model=Dispatch,
        key="shipment_id",
        order_by="requested_at",
        filters={"status": DispatchStatus},
        max_limit=500,
    )
