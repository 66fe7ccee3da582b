"""Shipments as the shipping context keeps them, from its own stream: requested by its
policy, then dispatched by a command (in SQLite or PostgreSQL: the SQL is the same but
for the placeholder).

A projection of its own beside :class:`~projections.shipping.Shipments` (which reads
sales' stream): a replay reads every stream its projection declares, and refuses one that
does not exist yet, so each stream the example's read models follow is a projection's
only one. Its key is the shipment's id, which is its order's id, so a row here and the
same order's row of ``shipment`` share it.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar
from uuid import UUID

import msgspec

from toolkit import Dialect, IntegrationEvent, Projection, ReadModelConnection, Translator, contract

shipping = Translator("shipping")


@contract("shipping.ShipmentRequested", version=1)
class ShipmentRequested(IntegrationEvent, frozen=True, kw_only=True):
    shipment_id: UUID
    order_id: UUID
    parcels: int
    requested_at: datetime


@contract("shipping.ShipmentDispatched", version=1)
class ShipmentDispatched(IntegrationEvent, frozen=True, kw_only=True):
    shipment_id: UUID
    carrier: str
    dispatched_at: datetime


class Requested(msgspec.Struct, frozen=True):
    shipment_id: str
    order_id: str
    parcels: int
    at: str


class Dispatched(msgspec.Struct, frozen=True):
    shipment_id: str
    carrier: str
    at: str


@shipping.on(ShipmentRequested)
def shipment_requested(e: ShipmentRequested) -> Requested:
    return Requested(str(e.shipment_id), str(e.order_id), e.parcels, e.requested_at.isoformat())


@shipping.on(ShipmentDispatched)
def shipment_dispatched(e: ShipmentDispatched) -> Dispatched:
    return Dispatched(str(e.shipment_id), e.carrier, e.dispatched_at.isoformat())


class Dispatches(Projection):
    name: ClassVar[str] = "dispatches"
    version: ClassVar[int] = 1
    translators = (shipping,)
    dialects = (Dialect.SQLITE, Dialect.POSTGRESQL)

    def create_tables(self, db: ReadModelConnection) -> None:
        db.execute(
            "CREATE TABLE IF NOT EXISTS dispatch ("
            " shipment_id TEXT PRIMARY KEY,"
            " order_id TEXT NOT NULL,"
            " parcels INTEGER NOT NULL,"
            " status TEXT NOT NULL,"
            " requested_at TEXT NOT NULL,"
            " carrier TEXT,"
            " dispatched_at TEXT)"
        )
        db.execute("CREATE INDEX IF NOT EXISTS dispatch_status ON dispatch (status)")

    def apply(self, fact: object, db: ReadModelConnection) -> None:
        p = db.dialect.param  # ? or %s
        if isinstance(fact, Requested):
            db.execute(
                "INSERT INTO dispatch (shipment_id, order_id, parcels, status, requested_at) "
                f"VALUES ({p}, {p}, {p}, 'requested', {p}) ON CONFLICT DO NOTHING",
                (fact.shipment_id, fact.order_id, fact.parcels, fact.at),
            )
        elif isinstance(fact, Dispatched):
            db.execute(
                f"UPDATE dispatch SET status = 'dispatched', carrier = {p}, dispatched_at = {p} "
                f"WHERE shipment_id = {p}",
                (fact.carrier, fact.at, fact.shipment_id),
            )
