"""Billing's anti-corruption layer: sales' customers and orders become accounts and
charges in billing's own terms (whole cents, never floats)."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from uuid import UUID

import msgspec

from toolkit import IntegrationEvent, contract
from toolkit.translator import Translator

sales = Translator("sales")


@contract("sales.CustomerRegistered", version=1)
class CustomerRegistered(IntegrationEvent, frozen=True, kw_only=True):
    customer_id: UUID
    name: str


@contract("sales.OrderPlaced", version=1)
class OrderPlaced(IntegrationEvent, frozen=True, kw_only=True):
    order_id: UUID
    customer_id: UUID
    total: Decimal


@contract("sales.OrderCancelled", version=1)
class OrderCancelled(IntegrationEvent, frozen=True, kw_only=True):
    order_id: UUID


# Billing's own language.


class AccountOpened(msgspec.Struct, frozen=True):
    account_id: UUID
    holder: str


class ChargeRaised(msgspec.Struct, frozen=True):
    charge_id: UUID
    account_id: UUID
    cents: int


class ChargeWaived(msgspec.Struct, frozen=True):
    charge_id: UUID


def cents(amount: Decimal) -> int:
    return int((amount * 100).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


@sales.on(CustomerRegistered)
def customer_registered(e: CustomerRegistered) -> AccountOpened:
    return AccountOpened(account_id=e.customer_id, holder=e.name)


@sales.on(OrderPlaced)
def order_placed(e: OrderPlaced) -> ChargeRaised:
    return ChargeRaised(charge_id=e.order_id, account_id=e.customer_id, cents=cents(e.total))


@sales.on(OrderCancelled)
def order_cancelled(e: OrderCancelled) -> ChargeWaived:
    return ChargeWaived(charge_id=e.order_id)
