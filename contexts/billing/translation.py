"""Billing's anti-corruption layer of sales' stream: its own copies of the sales contracts
it reads, with only the fields it uses, and what they mean in billing's terms. Billing
never imports sales' classes."""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID

import msgspec

from toolkit import IntegrationEvent, Translator, contract

sales = Translator("sales")


@contract("sales.OrderPlaced", version=1)
class OrderPlaced(IntegrationEvent, frozen=True, kw_only=True):
    order_id: UUID
    customer_id: UUID
    total: Decimal


@contract("sales.OrderCancelled", version=1)
class OrderCancelled(IntegrationEvent, frozen=True, kw_only=True):
    order_id: UUID
    reason: str


# Billing's own language.


class InvoiceDue(msgspec.Struct, frozen=True):
    order_id: UUID
    customer_id: UUID
    amount: Decimal


class InvoiceWithdrawn(msgspec.Struct, frozen=True):
    order_id: UUID
    reason: str


@sales.on(OrderPlaced)
def order_placed(e: OrderPlaced) -> InvoiceDue:
    return InvoiceDue(order_id=e.order_id, customer_id=e.customer_id, amount=e.total)


@sales.on(OrderCancelled)
def order_cancelled(e: OrderCancelled) -> InvoiceWithdrawn:
    return InvoiceWithdrawn(order_id=e.order_id, reason=e.reason)
