"""Billing's command endpoint: pay an invoice. (No `from __future__ import annotations`:
FastAPI reads these annotations at runtime.)

An invoice's id is its order's id, the ``charge_id`` of the billing read model. The
answer's consistency token (``billing:<log position>``) makes a read of a projection
that follows billing's stream wait for the payment.
"""

from decimal import Decimal
from uuid import UUID

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from contexts.billing.application import Billing
from toolkit import CONSISTENCY_HEADER
from toolkit.http.consistency import run_command


class Paid(BaseModel):
    id: UUID
    amount: Decimal
    consistency_token: str = Field(
        description="send it back in the `Consistency-Token` header of a read to see this "
        "command's effect (`<context>:<log position>`)"
    )


_ERRORS: dict[int | str, dict[str, str]] = {
    404: {"description": "the invoice does not exist"},
    409: {"description": "the invoice was changed by another command at the same time"},
    422: {"description": "the command is invalid (void, paid already); nothing was stored"},
}


def router(billing: Billing) -> APIRouter:
    """A refused command (``InvalidCommand``, ``UnknownAggregate``, ``ConflictError``) needs
    no handling here: the app answers it 422, 404 or 409 with a problem document."""
    api = APIRouter(prefix="/billing", tags=["billing"], responses=_ERRORS)

    @api.post("/invoices/{invoice_id}/payment")
    async def pay_invoice(invoice_id: UUID, response: Response) -> Paid:
        """Pay the invoice in full."""
        amount, token = await run_command(billing, billing.pay_invoice, invoice_id)
        response.headers[CONSISTENCY_HEADER] = str(token)
        return Paid(id=invoice_id, amount=amount, consistency_token=str(token))

    return api
