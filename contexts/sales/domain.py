"""Sales' aggregates: eventsourcing aggregates. Customers and orders are known by UUIDs
that follow the order they were created in (:class:`~toolkit.Aggregate`: billing keys its
charges by order id, and takes each at the end of its index); a product by its SKU, text
the business chose (:class:`~toolkit.TextAggregate`).

Event classes are declared explicitly, so the published language (and a type checker)
can name their fields.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TypedDict
from uuid import UUID

from eventsourcing.domain import event

from toolkit import Aggregate, TextAggregate


class OrderLine(TypedDict):
    sku: str
    quantity: int
    unit_price: Decimal


class Customer(Aggregate):
    class Registered(Aggregate.Created):
        name: str
        email: str

    @event(Registered)
    def __init__(self, name: str, email: str) -> None:
        self.name = name
        self.email = email


class Order(Aggregate):
    class Placed(Aggregate.Created):
        customer_id: UUID
        lines: list[OrderLine]

    class Cancelled(Aggregate.Event):
        reason: str

    class Shipped(Aggregate.Event):
        """Shipping dispatched the order's shipment (sales learns it from shipping's stream)."""

        shipment_id: UUID
        carrier: str

    class NoteAdded(Aggregate.Event):
        """A private fact: sales keeps it to itself (it is not in the published language)."""

        text: str

    @event(Placed)
    def __init__(self, customer_id: UUID, lines: list[OrderLine]) -> None:
        self.customer_id = customer_id
        self.lines = lines
        self.status = "placed"
        self.notes: list[str] = []

    @property
    def total(self) -> Decimal:
        return sum((line["unit_price"] * line["quantity"] for line in self.lines), Decimal(0))

    @event(Cancelled)
    def cancel(self, reason: str) -> None:
        self.status = "cancelled"

    @event(Shipped)
    def mark_shipped(self, shipment_id: UUID, carrier: str) -> None:
        self.status = "shipped"

    @event(NoteAdded)
    def add_note(self, text: str) -> None:
        self.notes.append(text)


class Product(TextAggregate):
    """A catalogue entry, known by its SKU: any text (``tea.green``, ``GIFT BOX 10%``,
    ``绿茶-500g``) of at most :data:`toolkit.wire.MAX_ID_TOKEN` characters once encoded."""

    class Listed(TextAggregate.Created):
        name: str
        unit_price: Decimal

    class Repriced(TextAggregate.Event):
        unit_price: Decimal

    @event(Listed)
    def __init__(self, id: str, name: str, unit_price: Decimal) -> None:
        self.name = name
        self.unit_price = unit_price

    @property
    def sku(self) -> str:
        return self.id

    @event(Repriced)
    def reprice(self, unit_price: Decimal) -> None:
        self.unit_price = unit_price
