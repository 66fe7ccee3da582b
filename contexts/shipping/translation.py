"""Shipping's anti-corruption layer of sales' stream: what it reads of sales' contracts
(its own copies, with only the fields it uses), and what that means in shipping's terms.
Shipping never imports sales' classes: prices and customers' names are not its business.
"""

from __future__ import annotations

from uuid import UUID

import msgspec

from toolkit import IntegrationEvent, Translator, contract

sales = Translator("sales")


class _Line(msgspec.Struct, frozen=True):
    quantity: int


@contract("sales.OrderPlaced", version=1)
class OrderPlaced(IntegrationEvent, frozen=True, kw_only=True):
    order_id: UUID
    customer_id: UUID
    lines: list[_Line]


@contract("sales.OrderCancelled", version=1)
class OrderCancelled(IntegrationEvent, frozen=True, kw_only=True):
    order_id: UUID
    reason: str


# Shipping's own language.


class ShipmentWanted(msgspec.Struct, frozen=True):
    order_id: UUID
    recipient_id: UUID
    items: int


class ShipmentNoLongerWanted(msgspec.Struct, frozen=True):
    order_id: UUID
    reason: str


@sales.on(OrderPlaced)
def order_placed(e: OrderPlaced) -> ShipmentWanted:
    items = sum(line.quantity for line in e.lines)
    return ShipmentWanted(order_id=e.order_id, recipient_id=e.customer_id, items=items)


@sales.on(OrderCancelled)
def order_cancelled(e: OrderCancelled) -> ShipmentNoLongerWanted:
    return ShipmentNoLongerWanted(order_id=e.order_id, reason=e.reason)
