"""Sales' policy: an order is marked shipped when shipping dispatches its shipment. It
reads shipping's stream through sales' own translator."""

from __future__ import annotations

from contexts.sales.application import Sales
from contexts.sales.translation import OrderLeftTheWarehouse, shipping
from toolkit import Policy


class MarkDispatchedOrdersShipped(Policy[Sales]):
    """Whenever shipping dispatches a shipment, mark its order shipped (publishing
    ``sales.OrderShipped``); a cancelled order is refused, and kept with the reason."""

    name = "mark-shipped"
    translators = (shipping,)

    def react(self, fact: object, sales: Sales) -> None:
        if isinstance(fact, OrderLeftTheWarehouse):
            sales.mark_order_shipped(fact.order_id, fact.shipment_id, fact.carrier)
