"""Billing's anti-corruption layer: sales' customers and orders become accounts and
charges in billing's own terms (whole cents, never floats).

Billing keeps sales' ids as opaque references (checked text, not UUID objects): it only
stores and compares them, so it never pays to build and print UUIDs.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from typing import Annotated

import msgspec

from toolkit import IntegrationEvent, Translator, contract

sales = Translator("sales")

Reference = Annotated[
    str, msgspec.Meta(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
]
"""A sales id as billing keeps it: the canonical text of a UUID."""


@contract("sales.CustomerRegistered", version=1)
class CustomerRegistered(IntegrationEvent, frozen=True, kw_only=True):
    customer_id: Reference
    name: str


@contract("sales.OrderPlaced", version=1)
class OrderPlaced(IntegrationEvent, frozen=True, kw_only=True):
    order_id: Reference
    customer_id: Reference
    total: Decimal


@contract("sales.OrderCancelled", version=1)
class OrderCancelled(IntegrationEvent, frozen=True, kw_only=True):
    order_id: Reference


# Billing's own language.


class AccountOpened(msgspec.Struct, frozen=True):
    account_id: Reference
    holder: str


class ChargeRaised(msgspec.Struct, frozen=True):
    charge_id: Reference
    account_id: Reference
    cents: int


class ChargeWaived(msgspec.Struct, frozen=True):
    charge_id: Reference


_HUNDRED = Decimal(100)


def cents(amount: Decimal) -> int:
    return int((amount * _HUNDRED).to_integral_value(rounding=ROUND_HALF_EVEN))


@sales.on(CustomerRegistered)
def customer_registered(e: CustomerRegistered) -> AccountOpened:
    return AccountOpened(account_id=e.customer_id, holder=e.name)


@sales.on(OrderPlaced)
def order_placed(e: OrderPlaced) -> ChargeRaised:
    return ChargeRaised(charge_id=e.order_id, account_id=e.customer_id, cents=cents(e.total))


@sales.on(OrderCancelled)
def order_cancelled(e: OrderCancelled) -> ChargeWaived:
    return ChargeWaived(charge_id=e.order_id)
