"""Customer accounts and what they owe, kept from sales' stream (in SQLite or PostgreSQL:
the SQL is the same but for the placeholder)."""

from __future__ import annotations

from typing import ClassVar, cast

from projections.billing.translation import AccountOpened, ChargeRaised, ChargeWaived, sales
from toolkit import Dialect, Projection, ReadModelConnection
from toolkit.readmodels import insert_rows


class Accounts(Projection):
    """An account per customer, with what its orders owe. Slice workers apply each
    aggregate in its order but not one aggregate before another, so a customer's charges
    may come before their account is opened: a charge opens the account (with no holder
    yet), and the account's opening fills the holder in. Either way round, the rows end
    the same as applied in log order."""

    name: ClassVar[str] = "billing"
    version: ClassVar[int] = 1
    translators = (sales,)
    slices: ClassVar[int | None] = 64  # by aggregate: the rows end the same in any order
    dialects = (Dialect.SQLITE, Dialect.POSTGRESQL)

    def create_tables(self, db: ReadModelConnection) -> None:
        db.execute(
            "CREATE TABLE IF NOT EXISTS account ("
            " account_id TEXT PRIMARY KEY,"
            " holder TEXT NOT NULL,"
            " owed_cents BIGINT NOT NULL DEFAULT 0,"
            " open_charges INTEGER NOT NULL DEFAULT 0)"
        )
        db.execute(
            "CREATE TABLE IF NOT EXISTS charge ("
            " charge_id TEXT PRIMARY KEY,"
            " account_id TEXT NOT NULL,"
            " cents INTEGER NOT NULL,"
            " waived INTEGER NOT NULL DEFAULT 0)"
        )

    def apply(self, fact: object, db: ReadModelConnection) -> None:
        self.apply_many([fact], db)

    def apply_many(self, facts: list[object], db: ReadModelConnection) -> None:
        p = db.dialect.param  # ? or %s
        if isinstance(facts[0], AccountOpened):
            opened = cast(list[AccountOpened], facts)
            db.executemany(  # its charges may have come first (see the class)
                f"INSERT INTO account (account_id, holder) VALUES ({p}, {p})"
                " ON CONFLICT (account_id) DO UPDATE SET holder = excluded.holder",
                [(f.account_id, f.holder) for f in opened],
            )
        elif isinstance(facts[0], ChargeRaised):
            raised = cast(list[ChargeRaised], facts)
            charges = [(f.charge_id, f.account_id, f.cents) for f in raised]
            insert_rows(db, "charge", ("charge_id", "account_id", "cents"), charges)  # COPY on PG
            owed: dict[str, list[int]] = {}
            for _, account_id, cents in charges:  # sums commute: one update an account
                total = owed.setdefault(account_id, [0, 0])
                total[0] += cents
                total[1] += 1
            db.executemany(  # in key order: concurrent partition workers never deadlock
                "INSERT INTO account (account_id, holder, owed_cents, open_charges) "
                f"VALUES ({p}, '', {p}, {p}) ON CONFLICT (account_id) DO UPDATE SET "
                "owed_cents = account.owed_cents + excluded.owed_cents, "
                "open_charges = account.open_charges + excluded.open_charges",
                [(account_id, c, n) for account_id, (c, n) in sorted(owed.items())],
            )
        elif isinstance(facts[0], ChargeWaived):
            for fact in cast(list[ChargeWaived], facts):
                row = db.execute(
                    f"UPDATE charge SET waived = 1 WHERE charge_id = {p} AND waived = 0 "
                    "RETURNING account_id, cents",
                    (fact.charge_id,),
                ).fetchone()
                if row is not None:
                    db.execute(
                        f"UPDATE account SET owed_cents = owed_cents - {p}, "
                        f"open_charges = open_charges - 1 WHERE account_id = {p}",
                        (row[1], row[0]),
                    )
