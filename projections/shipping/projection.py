"""Shipments awaiting dispatch, kept from sales' stream."""

from __future__ import annotations

import sqlite3
from typing import ClassVar, cast

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
        self.apply_many([fact], db)

    def apply_many(self, facts: list[object], db: sqlite3.Connection) -> None:
        if isinstance(facts[0], ShipmentAwaitingDispatch):
            awaiting = cast(list[ShipmentAwaitingDispatch], facts)
            db.executemany(
                "INSERT OR IGNORE INTO shipment VALUES (?, ?, 'awaiting_dispatch', ?, ?, ?, NULL)",
                [
                    (
                        str(f.shipment_id),
                        str(f.recipient_id),
                        f.parcels,
                        f.items,
                        f.since.isoformat(),
                    )
                    for f in awaiting
                ],
            )
        elif isinstance(facts[0], ShipmentCalledOff):
            called_off = cast(list[ShipmentCalledOff], facts)
            db.executemany(
                "UPDATE shipment SET status = 'called_off', called_off_because = ? "
                "WHERE shipment_id = ?",
                [(f.reason, str(f.shipment_id)) for f in called_off],
            )
