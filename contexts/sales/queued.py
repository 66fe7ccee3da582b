"""Sales' commands taken through its queue (``POST /sales/commands/<command>``, 202 and
a status resource), run by ``toolkit commands sales``: the same commands as the
synchronous endpoints of ``contexts.sales.api`` (``POST /sales/customers``,
``POST /sales/orders``), for clients that would rather not wait, and for bursts the
workers take at their own pace."""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID

import msgspec

from contexts.sales.application import Sales
from toolkit import CommandQueue

commands = CommandQueue(Sales)


class RegisterCustomer(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: str
    email: str


class Line(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    sku: str
    quantity: int
    unit_price: Decimal


class PlaceOrder(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    customer_id: UUID
    lines: list[Line]


@commands.command(RegisterCustomer)
def register_customer(command: RegisterCustomer, sales: Sales) -> dict[str, str]:
    return {"id": str(sales.register_customer(command.name, command.email))}


@commands.command(PlaceOrder)
def place_order(command: PlaceOrder, sales: Sales) -> dict[str, str]:
    lines = [msgspec.structs.asdict(line) for line in command.lines]
    return {"id": str(sales.place_order(command.customer_id, lines))}
