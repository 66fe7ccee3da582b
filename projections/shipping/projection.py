"""Shipments awaiting dispatch, kept from sales' stream."""

from __future__ import annotations

import sqlite3
from typing import ClassVar

from projections.shipping.translation import ShipmentAwaitingDispatch, ShipmentCalledOff, sales
from toolkit.projection import Projection


class Shipments(Projection):
    name: ClassVar[str] = "shipping"
    version: ClassVar[int] = 1
    translators = (sales,)

    def create_tables(self, db: sqlite3.Connection) -> None:
        db.execute(
            "CREATE TABLE IF NOT EXISTS shipment ("
            " shipment_id TEXT PRIMARY KEY,"
            " recipient_id TEXT NOT NULL,"
            " status TEXT NOT NULL,"
            " parcels INTEGER NOT NULL,"
            " items INTEGER NOT NULL,"
            " since TEXT NOT NULL,"
            " called_off_because TEXT)"
        )
        db.execute("CREATE INDEX IF NOT EXISTS shipment_status ON shipment (status, since)")

    def apply(self, fact: object, db: sqlite3.Connection) -> None:
        match fact:
            case ShipmentAwaitingDispatch():
                db.execute(
                    "INSERT OR IGNORE INTO shipment "
                    "VALUES (?, ?, 'awaiting_dispatch', ?, ?, ?, NULL)",
                    (
                        str(fact.shipment_id),
                        str(fact.recipient_id),
                        fact.parcels,
                        fact.items,
                        fact.since.isoformat(),
                    ),
                )
            case ShipmentCalledOff():
                db.execute(
                    "UPDATE shipment SET status = 'called_off', called_off_because = ? "
                    "WHERE shipment_id = ?",
                    (fact.reason, str(fact.shipment_id)),
                )
