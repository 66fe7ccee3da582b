"""Shipping's policy: a shipment for each order sales places, called off when the order
is cancelled. It reads sales' stream through shipping's own translator."""

from __future__ import annotations

from contexts.shipping.application import Shipping
from contexts.shipping.translation import ShipmentNoLongerWanted, ShipmentWanted, sales
from toolkit import Policy


class ShipPlacedOrders(Policy[Shipping]):
    """Whenever sales places an order, request its shipment; whenever it cancels one, call
    the shipment off (refused, and kept with the reason, once dispatched)."""

    name = "ship-orders"
    translators = (sales,)

    def react(self, fact: object, shipping: Shipping) -> None:
        if isinstance(fact, ShipmentWanted):
            shipping.request_shipment(fact.order_id, fact.recipient_id, fact.items)
        elif isinstance(fact, ShipmentNoLongerWanted):
            shipping.call_off_shipment(fact.order_id, fact.reason)
