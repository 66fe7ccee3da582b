"""Customer accounts and what they owe, kept from sales' stream."""

from __future__ import annotations

import sqlite3
from typing import ClassVar, cast

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
        self.apply_many([fact], db)

    def apply_many(self, facts: list[object], db: sqlite3.Connection) -> None:
        if isinstance(facts[0], AccountOpened):
            opened = cast(list[AccountOpened], facts)
            db.executemany(
                "INSERT OR IGNORE INTO account (account_id, holder) VALUES (?, ?)",
                [(f.account_id, f.holder) for f in opened],
            )
        elif isinstance(facts[0], ChargeRaised):
            raised = cast(list[ChargeRaised], facts)
            charges = [(f.charge_id, f.account_id, f.cents) for f in raised]
            db.executemany(
                "INSERT INTO charge (charge_id, account_id, cents) VALUES (?, ?, ?)", charges
            )
            owed: dict[str, list[int]] = {}
            for _, account_id, cents in charges:  # sums commute: one update an account
                total = owed.setdefault(account_id, [0, 0])
                total[0] += cents
                total[1] += 1
            db.executemany(
                "UPDATE account SET owed_cents = owed_cents + ?, "
                "open_charges = open_charges + ? WHERE account_id = ?",
                [(c, n, account_id) for account_id, (c, n) in owed.items()],
            )
        elif isinstance(facts[0], ChargeWaived):
            for fact in cast(list[ChargeWaived], facts):
                row = db.execute(
                    "UPDATE charge SET waived = 1 WHERE charge_id = ? AND waived = 0 "
                    "RETURNING account_id, cents",
                    (fact.charge_id,),
                ).fetchone()
                if row is not None:
                    db.execute(
                        "UPDATE account SET owed_cents = owed_cents - ?, "
                        "open_charges = open_charges - 1 WHERE account_id = ?",
                        (row[1], row[0]),
                    )
