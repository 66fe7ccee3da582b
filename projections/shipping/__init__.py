"""Shipping's view of sales: an order placed is a shipment awaiting dispatch."""

from projections.shipping.projection import Shipments

__all__ = ["Shipments"]
