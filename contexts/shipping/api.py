"""Shipping's command endpoint: dispatch a shipment. (No `from __future__ import
annotations`: FastAPI reads these annotations at runtime.)

A shipment's id is its order's id, the ``shipment_id`` of the shipping read model
(``GET /shipping/shipments/{shipment_id}``). The answer's consistency token
(``shipping:<log position>``) makes a read of a projection that follows shipping's
stream wait for the dispatch.
"""

from uuid import UUID

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from contexts.shipping.application import MAX_CARRIER, Shipping
from toolkit import CONSISTENCY_HEADER
from toolkit.http.consistency import run_command


class Dispatch(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    carrier: str = Field(min_length=1, max_length=MAX_CARRIER)


class Accepted(BaseModel):
    id: UUID
    consistency_token: str = Field(
        description="send it back in the `Consistency-Token` header of a read to see this "
        "command's effect (`<context>:<log position>`)"
    )


_ERRORS: dict[int | str, dict[str, str]] = {
    404: {"description": "the shipment does not exist"},
    409: {"description": "the shipment was changed by another command at the same time"},
    422: {"description": "the command is invalid (called off, dispatched already); nothing stored"},
}


def router(shipping: Shipping) -> APIRouter:
    """A refused command (``InvalidCommand``, ``UnknownAggregate``, ``ConflictError``) needs
    no handling here: the app answers it 422, 404 or 409 with a problem document."""
    api = APIRouter(prefix="/shipping", tags=["shipping"], responses=_ERRORS)

    @api.post("/shipments/{shipment_id}/dispatch")
    async def dispatch_shipment(
        shipment_id: UUID, dispatch: Dispatch, response: Response
    ) -> Accepted:
        command = shipping.dispatch_shipment
        _, token = await run_command(shipping, command, shipment_id, dispatch.carrier)
        response.headers[CONSISTENCY_HEADER] = str(token)
        return Accepted(id=shipment_id, consistency_token=str(token))

    return api
