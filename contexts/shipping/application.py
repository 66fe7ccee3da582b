"""Shipping's commands. The policy runs the first and the last (from sales' events); an
operator, over HTTP, dispatches."""

from __future__ import annotations

from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from contexts.shipping.domain import Shipment, parcels_for
from contexts.shipping.published import language
from toolkit import BoundedContext, InvalidCommand, UnknownAggregate

MAX_CARRIER = 100


class Shipping(BoundedContext[UUID]):
    name = "shipping"
    published_language = language
    reacts = True  # its log keeps tracking records: its policy runs on it

    def request_shipment(self, order_id: UUID, recipient_id: UUID, items: int) -> UUID:
        """The order's shipment, requested once: asked again (an order published again),
        it is the one already requested, and nothing is stored."""
        if items < 1:
            raise InvalidCommand(f"order {order_id} has nothing to ship")
        existing = self._find(order_id)
        if existing is not None:
            return existing.id
        shipment = Shipment(
            order_id=order_id, recipient_id=recipient_id, items=items, parcels=parcels_for(items)
        )
        self.save(shipment)
        return shipment.id

    def dispatch_shipment(self, shipment_id: UUID, carrier: str) -> None:
        carrier = carrier.strip()
        if not carrier or len(carrier) > MAX_CARRIER:
            raise InvalidCommand(f"a dispatch needs a carrier of 1 to {MAX_CARRIER} characters")
        shipment = self.get_shipment(shipment_id)
        if shipment.status == "called_off":
            raise InvalidCommand(f"shipment {shipment_id} was called off")
        if shipment.status == "dispatched":
            raise InvalidCommand(f"shipment {shipment_id} is dispatched already")
        shipment.dispatch(carrier=carrier)
        self.save(shipment)

    def call_off_shipment(self, order_id: UUID, reason: str) -> None:
        """Call off the order's shipment; one dispatched already cannot be (refused with
        the reason, which the policy keeps); one called off already stays so."""
        shipment = self.get_shipment(order_id)
        if shipment.status == "dispatched":
            raise InvalidCommand(
                f"shipment {shipment.id} was dispatched before its order was cancelled"
            )
        if shipment.status != "called_off":
            shipment.call_off(reason=reason)
            self.save(shipment)

    def get_shipment(self, shipment_id: UUID) -> Shipment:
        shipment = self._find(shipment_id)
        if shipment is None:
            raise UnknownAggregate(f"no shipment {shipment_id}")
        return shipment

    def _find(self, shipment_id: UUID) -> Shipment | None:
        try:
            shipment: object = self.repository.get(shipment_id)
        except AggregateNotFoundError:
            return None
        return shipment if isinstance(shipment, Shipment) else None
