"""Shipping's anti-corruption layer: what it reads from sales, and what that means here.

Shipping declares its own classes for the sales contracts, with only the fields it uses;
prices and customers' names are none of its business.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import msgspec

from toolkit import IntegrationEvent, Translator, contract

sales = Translator("sales")


class _Line(msgspec.Struct, frozen=True):
    sku: str
    quantity: int


@contract("sales.OrderPlaced", version=1)
class OrderPlaced(IntegrationEvent, frozen=True, kw_only=True):
    order_id: UUID
    customer_id: UUID
    lines: list[_Line]
    placed_at: datetime


@contract("sales.OrderCancelled", version=1)
class OrderCancelled(IntegrationEvent, frozen=True, kw_only=True):
    order_id: UUID
    reason: str


# Shipping's own language.


class ShipmentAwaitingDispatch(msgspec.Struct, frozen=True):
    shipment_id: UUID
    recipient_id: UUID
    parcels: int
    items: int
    since: datetime


class ShipmentCalledOff(msgspec.Struct, frozen=True):
    shipment_id: UUID
    reason: str


PARCEL_CAPACITY = 10
"""Items that fit one parcel."""


@sales.on(OrderPlaced)
def order_placed(e: OrderPlaced) -> ShipmentAwaitingDispatch:
    items = sum(line.quantity for line in e.lines)
    return ShipmentAwaitingDispatch(
        shipment_id=e.order_id,
        recipient_id=e.customer_id,
        parcels=max(1, -(-items // PARCEL_CAPACITY)),
        items=items,
        since=e.placed_at,
    )


@sales.on(OrderCancelled)
def order_cancelled(e: OrderCancelled) -> ShipmentCalledOff:
    return ShipmentCalledOff(shipment_id=e.order_id, reason=e.reason)
