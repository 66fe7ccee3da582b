"""Shipping's published language: the public, versioned events other contexts may read
(sales marks an order shipped from ``shipping.ShipmentDispatched``)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from contexts.shipping.domain import Shipment
from toolkit import IntegrationEvent, PublishedLanguage, contract

language = PublishedLanguage("shipping")


@contract("shipping.ShipmentRequested", version=1)
class ShipmentRequested(IntegrationEvent, frozen=True, kw_only=True):
    shipment_id: UUID
    order_id: UUID
    recipient_id: UUID
    items: int
    parcels: int
    requested_at: datetime


@contract("shipping.ShipmentDispatched", version=1)
class ShipmentDispatched(IntegrationEvent, frozen=True, kw_only=True):
    shipment_id: UUID
    order_id: UUID
    carrier: str
    dispatched_at: datetime


@language.maps(Shipment.Requested, to=ShipmentRequested)
def shipment_requested(e: Shipment.Requested) -> ShipmentRequested:
    return ShipmentRequested(
        shipment_id=e.originator_id,
        order_id=e.order_id,
        recipient_id=e.recipient_id,
        items=e.items,
        parcels=e.parcels,
        requested_at=e.timestamp,
    )


@language.maps(Shipment.Dispatched, to=ShipmentDispatched)
def shipment_dispatched(e: Shipment.Dispatched) -> ShipmentDispatched:
    # Shipment ids are their orders' ids (see contexts.shipping.domain); the contract
    # carries both, so readers never depend on that choice.
    return ShipmentDispatched(
        shipment_id=e.originator_id,
        order_id=e.originator_id,
        carrier=e.carrier,
        dispatched_at=e.timestamp,
    )
