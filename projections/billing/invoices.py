"""Invoices as the billing context keeps them, from its own stream: issued by its policy,
then paid by a command; amounts in whole cents (in SQLite or PostgreSQL: the SQL is the
same but for the placeholder).

A projection of its own beside :class:`~projections.billing.Accounts` (which reads sales'
stream): a replay reads every stream its projection declares, and refuses one that does
not exist yet, so each stream the example's read models follow is a projection's only one.
Its key is the invoice's id, which is its order's id: the ``charge_id`` of ``charge``.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import ClassVar
from uuid import UUID

import msgspec

from projections.billing.translation import cents
from toolkit import Dialect, IntegrationEvent, Projection, ReadModelConnection, Translator, contract

billing = Translator("billing")


@contract("billing.InvoiceIssued", version=1)
class InvoiceIssued(IntegrationEvent, frozen=True, kw_only=True):
    invoice_id: UUID
    customer_id: UUID
    amount: Decimal
    issued_at: datetime


@contract("billing.InvoicePaid", version=1)
class InvoicePaid(IntegrationEvent, frozen=True, kw_only=True):
    invoice_id: UUID
    paid_at: datetime


class Issued(msgspec.Struct, frozen=True):
    invoice_id: str
    account_id: str
    cents: int
    at: str


class Paid(msgspec.Struct, frozen=True):
    invoice_id: str
    at: str


@billing.on(InvoiceIssued)
def invoice_issued(e: InvoiceIssued) -> Issued:
    return Issued(str(e.invoice_id), str(e.customer_id), cents(e.amount), e.issued_at.isoformat())


@billing.on(InvoicePaid)
def invoice_paid(e: InvoicePaid) -> Paid:
    return Paid(str(e.invoice_id), e.paid_at.isoformat())


class Invoices(Projection):
    name: ClassVar[str] = "invoices"
    version: ClassVar[int] = 1
    translators = (billing,)
    dialects = (Dialect.SQLITE, Dialect.POSTGRESQL)

    def create_tables(self, db: ReadModelConnection) -> None:
        db.execute(
            "CREATE TABLE IF NOT EXISTS invoice ("
            " invoice_id TEXT PRIMARY KEY,"
            " account_id TEXT NOT NULL,"
            " cents BIGINT NOT NULL,"
            " status TEXT NOT NULL,"
            " issued_at TEXT NOT NULL,"
            " paid_at TEXT)"
        )
        db.execute("CREATE INDEX IF NOT EXISTS invoice_account ON invoice (account_id, status)")

    def apply(self, fact: object, db: ReadModelConnection) -> None:
        p = db.dialect.param  # ? or %s
        if isinstance(fact, Issued):
            db.execute(
                "INSERT INTO invoice (invoice_id, account_id, cents, status, issued_at) "
                f"VALUES ({p}, {p}, {p}, 'issued', {p}) ON CONFLICT DO NOTHING",
                (fact.invoice_id, fact.account_id, fact.cents, fact.at),
            )
        elif isinstance(fact, Paid):
            db.execute(
                f"UPDATE invoice SET status = 'paid', paid_at = {p} WHERE invoice_id = {p}",
                (fact.at, fact.invoice_id),
            )
