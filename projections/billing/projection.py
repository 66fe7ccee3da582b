"""Customer accounts and what they owe, kept from sales' stream."""

from __future__ import annotations

import sqlite3
from typing import ClassVar

from projections.billing.translation import AccountOpened, ChargeRaised, ChargeWaived, sales
from toolkit.projection import Projection


class Accounts(Projection):
    name: ClassVar[str] = "billing"
    version: ClassVar[int] = 1
    translators = (sales,)

    def create_tables(self, db: sqlite3.Connection) -> None:
        db.execute(
            "CREATE TABLE IF NOT EXISTS account ("
            " account_id TEXT PRIMARY KEY,"
            " holder TEXT NOT NULL,"
            " owed_cents INTEGER NOT NULL DEFAULT 0,"
            " open_charges INTEGER NOT NULL DEFAULT 0)"
        )
        db.execute(
            "CREATE TABLE IF NOT EXISTS charge ("
            " charge_id TEXT PRIMARY KEY,"
            " account_id TEXT NOT NULL,"
            " cents INTEGER NOT NULL,"
            " waived INTEGER NOT NULL DEFAULT 0)"
        )

    def apply(self, fact: object, db: sqlite3.Connection) -> None:
        match fact:
            case AccountOpened():
                db.execute(
                    "INSERT OR IGNORE INTO account (account_id, holder) VALUES (?, ?)",
                    (str(fact.account_id), fact.holder),
                )
            case ChargeRaised():
                db.execute(
                    "INSERT INTO charge (charge_id, account_id, cents) VALUES (?, ?, ?)",
                    (str(fact.charge_id), str(fact.account_id), fact.cents),
                )
                db.execute(
                    "UPDATE account SET owed_cents = owed_cents + ?, "
                    "open_charges = open_charges + 1 WHERE account_id = ?",
                    (fact.cents, str(fact.account_id)),
                )
            case ChargeWaived():
                row = db.execute(
                    "UPDATE charge SET waived = 1 WHERE charge_id = ? AND waived = 0 "
                    "RETURNING account_id, cents",
                    (str(fact.charge_id),),
                ).fetchone()
                if row is not None:
                    db.execute(
                        "UPDATE account SET owed_cents = owed_cents - ?, "
                        "open_charges = open_charges - 1 WHERE account_id = ?",
                        (row[1], row[0]),
                    )
