"""Billing's read endpoints. (No `from __future__ import annotations`: FastAPI reads
these annotations at runtime.)"""

from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel

from toolkit import ReadModel, ReadModelConnection, ReadModelHome, resource_router


class Account(BaseModel):
    account_id: UUID
    holder: str
    owed_cents: int
    open_charges: int


def router(home: ReadModelHome) -> APIRouter:
    api = APIRouter(prefix="/billing", tags=["billing"])
    Db = Annotated[ReadModelConnection, Depends(ReadModel(home))]

    @api.get("/accounts/{account_id}")
    def get_account(account_id: UUID, db: Db) -> Account:
        row = db.execute(
            "SELECT account_id, holder, owed_cents, open_charges FROM account "
            f"WHERE account_id = {db.dialect.param}",
            (str(account_id),),
        ).fetchone()
        if row is None:
            raise HTTPException(404, f"no account {account_id}")
        return Account(account_id=row[0], holder=row[1], owed_cents=row[2], open_charges=row[3])

    return api


InvoiceStatus = Literal["issued", "paid"]


class Invoice(BaseModel):
    """An invoice as the billing context keeps it (the ``invoices`` read model, from
    billing's stream): its id is its order's, the ``charge_id`` of an account's charge."""

    invoice_id: UUID
    account_id: UUID
    cents: int
    status: InvoiceStatus
    issued_at: str
    paid_at: str | None = None


def invoices(home: ReadModelHome) -> APIRouter:
    """``GET /billing/invoices/{invoice_id}`` and ``GET /billing/invoices`` (by
    ``issued_at``, filtered by ``status`` and ``account_id``): where a payment's
    consistency token (``billing:<position>``) is read back."""
    return resource_router(
        home,
        path="/billing/invoices",
        table="invoice",
        model=Invoice,
        key="invoice_id",
        order_by="issued_at",
        filters={"status": InvoiceStatus, "account_id": UUID},
        max_limit=500,
    )
