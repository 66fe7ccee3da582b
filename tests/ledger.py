"""A projection that records the order it saw: every order event once, numbered as
applied, with the worker that applied it (tests of workers sharing one read model)."""

from __future__ import annotations

from typing import ClassVar
from uuid import UUID

import msgspec

from toolkit import IntegrationEvent, contract
from toolkit.read.projection import Projection
from toolkit.read.translator import Translator
from toolkit.readmodels import Connection, Dialect

orders_stream = Translator("sales")


@contract("sales.OrderPlaced", version=1)
class Placed(IntegrationEvent, frozen=True, kw_only=True):
    order_id: UUID


@contract("sales.OrderCancelled", version=1)
class Cancelled(IntegrationEvent, frozen=True, kw_only=True):
    order_id: UUID


class Entry(msgspec.Struct, frozen=True):
    order: str
    kind: str


@orders_stream.on(Placed)
def placed(e: Placed) -> Entry:
    return Entry(str(e.order_id), "placed")


@orders_stream.on(Cancelled)
def cancelled(e: Cancelled) -> Entry:
    return Entry(str(e.order_id), "cancelled")


class Ledger(Projection):
    """Every order event, with the worker that applied it, in the order applied."""

    name: ClassVar[str] = "ledger"
    translators = (orders_stream,)
    dialects = (Dialect.SQLITE, Dialect.POSTGRESQL)

    def __init__(self, worker: int) -> None:
        self.worker = worker

    def create_tables(self, db: Connection) -> None:
        counter = {
            Dialect.SQLITE: "INTEGER PRIMARY KEY AUTOINCREMENT",
            Dialect.POSTGRESQL: "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        }[db.dialect]
        db.execute(
            f"CREATE TABLE IF NOT EXISTS entry (applied {counter},"
            " order_id TEXT NOT NULL, kind TEXT NOT NULL, worker INTEGER NOT NULL,"
            " UNIQUE (order_id, kind))"  # applying anything twice fails loudly
        )

    def apply(self, fact: object, db: Connection) -> None:
        assert isinstance(fact, Entry)
        p = db.dialect.param
        db.execute(
            f"INSERT INTO entry (order_id, kind, worker) VALUES ({p}, {p}, {p})",
            (fact.order, fact.kind, self.worker),
        )
