"""Billing's published language: the public, versioned events other contexts may read."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import UUID

from contexts.billing.domain import Invoice
from toolkit import IntegrationEvent, PublishedLanguage, contract

language = PublishedLanguage("billing")


@contract("billing.InvoiceIssued", version=1)
class InvoiceIssued(IntegrationEvent, frozen=True, kw_only=True):
    invoice_id: UUID
    order_id: UUID
    customer_id: UUID
    amount: Decimal
    issued_at: datetime


@contract("billing.InvoicePaid", version=1)
class InvoicePaid(IntegrationEvent, frozen=True, kw_only=True):
    """Carries the customer and the amount, so a reader needs no earlier event to use it."""

    invoice_id: UUID
    order_id: UUID
    customer_id: UUID
    amount: Decimal
    paid_at: datetime


@language.maps(Invoice.Issued, to=InvoiceIssued)
def invoice_issued(e: Invoice.Issued) -> InvoiceIssued:
    return InvoiceIssued(
        invoice_id=e.originator_id,
        order_id=e.order_id,
        customer_id=e.customer_id,
        amount=e.amount,
        issued_at=e.timestamp,
    )


@language.maps(Invoice.Paid, to=InvoicePaid)
def invoice_paid(e: Invoice.Paid) -> InvoicePaid:
    return InvoicePaid(
        invoice_id=e.originator_id,
        order_id=e.originator_id,  # an invoice's id is its order's (contexts.billing.domain)
        customer_id=e.customer_id,
        amount=e.amount,
        paid_at=e.timestamp,
    )
