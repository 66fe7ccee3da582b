"""Systems the CLI tests run: the example one with the next version of shipping; sales
with billing and a sliced ledger, for workers of sliced projections on a cluster."""

from __future__ import annotations

import os
from typing import ClassVar
from uuid import UUID

import msgspec

from contexts.sales import Sales
from projections.billing import Accounts
from projections.shipping import Shipments
from toolkit import IntegrationEvent, Translator, contract
from toolkit.read.projection import Projection
from toolkit.readmodels import Connection, Dialect
from toolkit.system import System


class ShipmentsV2(Shipments):
    version: ClassVar[int] = 2


shipping_v2 = System(contexts={"sales": Sales}, projections={"shipping": ShipmentsV2})


orders = Translator("sales")


@contract("sales.OrderPlaced", version=1)
class Placed(IntegrationEvent, frozen=True, kw_only=True):
    order_id: UUID


@contract("sales.OrderCancelled", version=1)
class Cancelled(IntegrationEvent, frozen=True, kw_only=True):
    order_id: UUID


class Entry(msgspec.Struct, frozen=True):
    order: str
    kind: str


@orders.on(Placed)
def placed(e: Placed) -> Entry:
    return Entry(str(e.order_id), "placed")


@orders.on(Cancelled)
def cancelled(e: Cancelled) -> Entry:
    return Entry(str(e.order_id), "cancelled")


class OrderLedger(Projection):
    """Every order event once (UNIQUE (order_id, kind): applying one twice fails loudly),
    numbered in the order applied, with the pid of the worker process that applied it: a
    model that records the order it saw, cut into 16 slices by aggregate."""

    name: ClassVar[str] = "ledger"
    translators = (orders,)
    slices: ClassVar[int | None] = 16
    dialects = (Dialect.SQLITE, Dialect.POSTGRESQL)

    def __init__(self) -> None:
        self.worker = os.getpid()

    def create_tables(self, db: Connection) -> None:
        counter = {
            Dialect.SQLITE: "INTEGER PRIMARY KEY AUTOINCREMENT",
            Dialect.POSTGRESQL: "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        }[db.dialect]
        db.execute(
            f"CREATE TABLE IF NOT EXISTS entry (applied {counter},"
            " order_id TEXT NOT NULL, kind TEXT NOT NULL, worker INTEGER NOT NULL,"
            " UNIQUE (order_id, kind))"
        )

    def apply(self, fact: object, db: Connection) -> None:
        assert isinstance(fact, Entry)
        p = db.dialect.param
        db.execute(
            f"INSERT INTO entry (order_id, kind, worker) VALUES ({p}, {p}, {p})",
            (fact.order, fact.kind, self.worker),
        )


sliced_sales = System(
    contexts={"sales": Sales}, projections={"billing": Accounts, "ledger": OrderLedger}
)
"""What ``toolkit project billing`` and ``toolkit project ledger`` run as workers sharing
slices (tests/faults/test_cluster_slices.py)."""
