"""Billing's aggregate: an invoice, one per order placed in sales.

An invoice is known by its order's id, as a shipment is in shipping: the policy that
issues it can tell at once whether it exists (its command is idempotent), and the billing
read model's ``charge_id`` is the id the payment command takes.
"""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID

from eventsourcing.domain import event

from toolkit import Aggregate


class Invoice(Aggregate):
    class Issued(Aggregate.Created):
        order_id: UUID
        customer_id: UUID
        amount: Decimal

    class Paid(Aggregate.Event):
        """What was paid and by whom, recorded with the payment itself."""

        customer_id: UUID
        amount: Decimal

    class Voided(Aggregate.Event):
        """A private fact: the order's cancellation is sales' to publish, not billing's."""

        reason: str

    @staticmethod
    def create_id(order_id: UUID, **_: object) -> UUID:
        return order_id

    @event(Issued)
    def __init__(self, order_id: UUID, customer_id: UUID, amount: Decimal) -> None:
        self.order_id = order_id
        self.customer_id = customer_id
        self.amount = amount
        self.status = "open"

    @event(Paid)
    def pay(self, customer_id: UUID, amount: Decimal) -> None:
        self.status = "paid"

    @event(Voided)
    def void(self, reason: str) -> None:
        self.status = "void"
