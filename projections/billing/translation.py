"""Billing's anti-corruption layer: sales' customers and orders become accounts and
charges in billing's own terms (whole cents, never floats).

Billing keeps sales' ids as opaque references (checked text, not UUID objects): it only
stores and compares them, so it never pays to build and print UUIDs.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

import msgspec

from toolkit import IntegrationEvent, Translator, contract

sales = Translator("sales")

REFERENCE = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
"""What a sales id matches, whole, as the contract's JSON Schema says (there ``$`` is the
end of the text; Python's ``re.search``, which msgspec's ``Meta(pattern=...)`` used when it
checked references, let a final newline through: "<id>\n" was taken as another order)."""

Reference = Annotated[str, msgspec.Meta(extra_json_schema={"pattern": REFERENCE})]
"""A sales id as billing keeps it: the canonical text of a UUID. A contract holding one
checks it in its ``__post_init__`` (msgspec calls it once decoded): msgspec's
``Meta(pattern=...)`` cost 0.65 µs an id, two an order, where one ``bytes.translate`` of
both ids costs 0.15 µs (decoding OrderPlaced 1.20 -> 0.53 µs)."""

# Each byte's class: h a lowercase hex digit, - a dash, ? anything else (a byte of a
# non-ASCII character too). A reference so classed is _SHAPE; two joined by a newline,
# _TWO, which only two references give: its one ? must be the newline, at 36.
_CLASSES = bytes(
    0x68 if byte in b"0123456789abcdef" else 0x2D if byte == 0x2D else 0x3F for byte in range(256)
)
_SHAPE = b"hhhhhhhh-hhhh-hhhh-hhhh-hhhhhhhhhhhh"
_TWO = _SHAPE + b"?" + _SHAPE


def is_reference(text: str) -> bool:
    """Whether ``text`` matches :data:`REFERENCE`, whole."""
    return len(text) == 36 and _classed(text) == _SHAPE


def _classed(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass").translate(_CLASSES)


def _refuse(event: msgspec.Struct, *fields: str) -> None:
    """Raise, in msgspec's words, for the first of ``fields`` that is not a reference."""
    for field in fields:
        if not is_reference(getattr(event, field)):
            raise ValueError(f"Expected `str` matching regex {REFERENCE!r} - at `$.{field}`")


@contract("sales.CustomerRegistered", version=1)
class CustomerRegistered(IntegrationEvent, frozen=True, kw_only=True):
    customer_id: Reference
    name: str

    def __post_init__(self) -> None:
        if _classed(self.customer_id) != _SHAPE:
            _refuse(self, "customer_id")


@contract("sales.OrderPlaced", version=1)
class OrderPlaced(IntegrationEvent, frozen=True, kw_only=True):
    order_id: Reference
    customer_id: Reference
    total: Decimal

    def __post_init__(self) -> None:
        # Inline, both at once: a function call more cost 0.12 µs.
        both = f"{self.order_id}\n{self.customer_id}".encode("utf-8", "surrogatepass")
        if both.translate(_CLASSES) != _TWO:
            _refuse(self, "order_id", "customer_id")


@contract("sales.OrderCancelled", version=1)
class OrderCancelled(IntegrationEvent, frozen=True, kw_only=True):
    order_id: Reference

    def __post_init__(self) -> None:
        if _classed(self.order_id) != _SHAPE:
            _refuse(self, "order_id")


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
    """Whole cents, half to even: a Decimal's ``round`` to an int always rounds so,
    whatever the context (0.15 µs; ``int(...to_integral_value(rounding=...))`` 0.30)."""
    return round(amount * _HUNDRED)


@sales.on(CustomerRegistered)
def customer_registered(e: CustomerRegistered) -> AccountOpened:
    return AccountOpened(account_id=e.customer_id, holder=e.name)


@sales.on(OrderPlaced)
def order_placed(e: OrderPlaced) -> ChargeRaised:
    return ChargeRaised(charge_id=e.order_id, account_id=e.customer_id, cents=cents(e.total))


@sales.on(OrderCancelled)
def order_cancelled(e: OrderCancelled) -> ChargeWaived:
    return ChargeWaived(charge_id=e.order_id)
