"""A projection of sales' products (text ids: SKUs) whose handler fails for some of them
until a fixed version is deployed, and the system that runs it beside shipping and
billing, for the pipeline state machine (tests/faults/test_pipeline_states.py) and the
processes it starts.

The handler fails for every SKU holding the text in ``CATALOGUE_FAILS`` (read when the
projection is made): a process started with it is the broken deploy, one started
without it the fixed one. Failing by what a SKU holds, rather than by a list that grows,
keeps a clean build failing exactly where the live model failed."""

from __future__ import annotations

import os
from decimal import Decimal
from typing import ClassVar

import msgspec

from contexts.sales import Sales
from projections.billing import Accounts
from projections.shipping import Shipments
from toolkit import IntegrationEvent, contract
from toolkit.read.projection import Projection
from toolkit.read.translator import Translator
from toolkit.readmodels import Connection, Dialect
from toolkit.system import System

FAILS = "CATALOGUE_FAILS"

sales = Translator("sales")


@contract("sales.ProductListed", version=1)
class ProductListed(IntegrationEvent, frozen=True, kw_only=True):
    sku: str
    name: str
    unit_price: Decimal


@contract("sales.ProductRepriced", version=1)
class ProductRepriced(IntegrationEvent, frozen=True, kw_only=True):
    sku: str
    unit_price: Decimal


class Listed(msgspec.Struct, frozen=True):
    sku: str
    name: str
    price: str


class Repriced(msgspec.Struct, frozen=True):
    sku: str
    price: str


@sales.on(ProductListed)
def listed(e: ProductListed) -> Listed:
    return Listed(e.sku, e.name, str(e.unit_price))


@sales.on(ProductRepriced)
def repriced(e: ProductRepriced) -> Repriced:
    return Repriced(e.sku, str(e.unit_price))


class Catalogue(Projection):
    """Each product with its price and how often it was repriced (an order-sensitive
    model: a repricing applied before its listing, or twice, shows)."""

    name: ClassVar[str] = "catalogue"
    translators = (sales,)
    dialects = (Dialect.SQLITE, Dialect.POSTGRESQL)
    retries: ClassVar[int] = 1
    retry_delay: ClassVar[float] = 0.01

    def __init__(self, fails: str | None = None) -> None:
        if fails is None:
            fails = os.environ.get(FAILS, "")
        self.fails = fails or None
        """The handler fails for SKUs holding this (None: the fixed version)."""

    def create_tables(self, db: Connection) -> None:
        db.execute(
            "CREATE TABLE IF NOT EXISTS product (sku TEXT PRIMARY KEY, name TEXT NOT NULL,"
            " price TEXT NOT NULL, repricings INTEGER NOT NULL)"
        )

    def apply(self, fact: object, db: Connection) -> None:
        assert isinstance(fact, Listed | Repriced)
        if self.fails is not None and self.fails in fact.sku:
            raise RuntimeError(f"cannot file {fact.sku!r}")
        p = db.dialect.param
        if isinstance(fact, Listed):
            db.execute(
                f"INSERT INTO product VALUES ({p}, {p}, {p}, 0)", (fact.sku, fact.name, fact.price)
            )
            return
        changed = db.execute(
            f"UPDATE product SET price = {p}, repricings = repricings + 1 WHERE sku = {p}",
            (fact.price, fact.sku),
        ).rowcount
        if changed != 1:
            raise RuntimeError(f"repriced {fact.sku!r} before it was listed")


system = System(
    contexts={"sales": Sales},
    projections={"shipping": Shipments, "billing": Accounts, "catalogue": Catalogue},
)
