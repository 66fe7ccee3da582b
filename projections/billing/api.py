"""Billing's read endpoints. (No `from __future__ import annotations`: FastAPI reads
these annotations at runtime.)"""

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel

from toolkit import ReadModel, ReadModelConnection, ReadModelHome


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
