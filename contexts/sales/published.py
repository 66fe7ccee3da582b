"""Sales' published language: the public, versioned events other contexts may read."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import UUID

import msgspec

from contexts.sales.domain import Customer, Order, Product
from toolkit import IntegrationEvent, PublishedLanguage, contract

language = PublishedLanguage("sales")


@contract("sales.CustomerRegistered", version=1)
class CustomerRegistered(IntegrationEvent, frozen=True, kw_only=True):
    customer_id: UUID
    name: str
    email: str


class OrderLine(msgspec.Struct, frozen=True):
    sku: str
    quantity: int
    unit_price: Decimal


@contract("sales.OrderPlaced", version=1)
class OrderPlaced(IntegrationEvent, frozen=True, kw_only=True):
    order_id: UUID
    customer_id: UUID
    lines: list[OrderLine]
    total: Decimal
    placed_at: datetime


@contract("sales.OrderCancelled", version=1)
class OrderCancelled(IntegrationEvent, frozen=True, kw_only=True):
    order_id: UUID
    reason: str
    cancelled_at: datetime


@contract("sales.OrderShipped", version=1)
class OrderShipped(IntegrationEvent, frozen=True, kw_only=True):
    order_id: UUID
    shipment_id: UUID
    carrier: str
    shipped_at: datetime


@contract("sales.ProductListed", version=1)
class ProductListed(IntegrationEvent, frozen=True, kw_only=True):
    """A product entered the catalogue. Its SKU is the aggregate id: any text, carried
    as is here and in the envelope's ``subject``, percent-encoded in the NATS subject."""

    sku: str
    name: str
    unit_price: Decimal


@contract("sales.ProductRepriced", version=1)
class ProductRepriced(IntegrationEvent, frozen=True, kw_only=True):
    sku: str
    unit_price: Decimal
    repriced_at: datetime


@language.maps(Customer.Registered, to=CustomerRegistered)
def customer_registered(e: Customer.Registered) -> CustomerRegistered:
    return CustomerRegistered(customer_id=e.originator_id, name=e.name, email=e.email)


@language.maps(Order.Placed, to=OrderPlaced)
def order_placed(e: Order.Placed) -> OrderPlaced:
    lines = [OrderLine(ln["sku"], ln["quantity"], ln["unit_price"]) for ln in e.lines]
    return OrderPlaced(
        order_id=e.originator_id,
        customer_id=e.customer_id,
        lines=lines,
        total=sum((ln.unit_price * ln.quantity for ln in lines), Decimal(0)),
        placed_at=e.timestamp,
    )


@language.maps(Order.Cancelled, to=OrderCancelled)
def order_cancelled(e: Order.Cancelled) -> OrderCancelled:
    return OrderCancelled(order_id=e.originator_id, reason=e.reason, cancelled_at=e.timestamp)


@language.maps(Order.Shipped, to=OrderShipped)
def order_shipped(e: Order.Shipped) -> OrderShipped:
    return OrderShipped(
        order_id=e.originator_id,
        shipment_id=e.shipment_id,
        carrier=e.carrier,
        shipped_at=e.timestamp,
    )


@language.maps(Product.Listed, to=ProductListed)
def product_listed(e: Product.Listed) -> ProductListed:
    return ProductListed(sku=e.originator_id, name=e.name, unit_price=e.unit_price)


@language.maps(Product.Repriced, to=ProductRepriced)
def product_repriced(e: Product.Repriced) -> ProductRepriced:
    return ProductRepriced(sku=e.originator_id, unit_price=e.unit_price, repriced_at=e.timestamp)
