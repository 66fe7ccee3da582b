"""Shipping's aggregate: a shipment, one per order placed in sales.

A shipment is known by its order's id: the policy that requests it can tell at once
whether it exists (so its command is idempotent whoever asks twice), and the shipping read
model's ``shipment_id`` is the id the dispatch command takes. Shipping keeps the id as an
opaque reference; it never reads sales' aggregates.
"""

from __future__ import annotations

from uuid import UUID

from eventsourcing.domain import event

from toolkit import Aggregate

PARCEL_CAPACITY = 10
"""Items that fit one parcel."""


class Shipment(Aggregate):
    class Requested(Aggregate.Created):
        order_id: UUID
        recipient_id: UUID
        items: int
        parcels: int

    class Dispatched(Aggregate.Event):
        carrier: str

    class CalledOff(Aggregate.Event):
        """A private fact: nobody outside shipping needs it (sales knows why: it cancelled)."""

        reason: str

    @staticmethod
    def create_id(order_id: UUID, **_: object) -> UUID:
        return order_id

    @event(Requested)
    def __init__(self, order_id: UUID, recipient_id: UUID, items: int, parcels: int) -> None:
        self.order_id = order_id
        self.recipient_id = recipient_id
        self.items = items
        self.parcels = parcels
        self.status = "requested"
        self.carrier: str | None = None

    @event(Dispatched)
    def dispatch(self, carrier: str) -> None:
        self.status = "dispatched"
        self.carrier = carrier

    @event(CalledOff)
    def call_off(self, reason: str) -> None:
        self.status = "called_off"


def parcels_for(items: int) -> int:
    return max(1, -(-items // PARCEL_CAPACITY))
