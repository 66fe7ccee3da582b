"""Shipping: a shipment for each order sales places, dispatched by a command. Publishes
ShipmentRequested and ShipmentDispatched; keeps a shipment's calling off private. Reacts
to sales' stream through a translator of its own (:mod:`contexts.shipping.policy`)."""

from contexts.shipping.application import Shipping
from contexts.shipping.domain import Shipment

__all__ = ["Shipment", "Shipping"]
