"""Sales' anti-corruption layer of shipping's stream: its own copy of the one shipping
contract it reads, with only the fields it uses, and what it means in sales' terms.
Sales never imports shipping's classes."""

from __future__ import annotations

from uuid import UUID

import msgspec

from toolkit import IntegrationEvent, Translator, contract

shipping = Translator("shipping")


@contract("shipping.ShipmentDispatched", version=1)
class ShipmentDispatched(IntegrationEvent, frozen=True, kw_only=True):
    shipment_id: UUID
    order_id: UUID
    carrier: str


class OrderLeftTheWarehouse(msgspec.Struct, frozen=True):
    """Sales' own language: an order on its way to the customer."""

    order_id: UUID
    shipment_id: UUID
    carrier: str


@shipping.on(ShipmentDispatched)
def shipment_dispatched(e: ShipmentDispatched) -> OrderLeftTheWarehouse:
    return OrderLeftTheWarehouse(order_id=e.order_id, shipment_id=e.shipment_id, carrier=e.carrier)
