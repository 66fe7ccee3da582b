"""Shipments awaiting dispatch, kept from sales' stream (in SQLite or PostgreSQL: the SQL
is the same but for the placeholder)."""

from __future__ import annotations

from typing import ClassVar, cast

from projections.shipping.translation import ShipmentAwaitingDispatch, ShipmentCalledOff, sales
from toolkit import Dialect, Projection, ReadModelConnection


class Shipments(Projection):
    name: ClassVar[str] = "shipping"
    version: ClassVar[int] = 1
    translators = (sales,)
    dialects = (Dialect.SQLITE, Dialect.POSTGRESQL)

    def create_tables(self, db: ReadModelConnection) -> None:
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

    def apply(self, fact: object, db: ReadModelConnection) -> None:
        self.apply_many([fact], db)

    def apply_many(self, facts: list[object], db: ReadModelConnection) -> None:
        p = db.dialect.param  # ? or %s
        if isinstance(facts[0], ShipmentAwaitingDispatch):
            awaiting = cast(list[ShipmentAwaitingDispatch], facts)
            db.executemany(
                f"INSERT INTO shipment VALUES ({p}, {p}, 'awaiting_dispatch', {p}, {p}, {p}, NULL)"
                " ON CONFLICT DO NOTHING",
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
                f"UPDATE shipment SET status = 'called_off', called_off_because = {p} "
                f"WHERE shipment_id = {p}",
                [(f.reason, str(f.shipment_id)) for f in called_off],
            )
