"""Aggregate ids that look like subject syntax are stored, relayed and consumed intact,
and each subject matches only its own aggregate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import orjson
import pytest
from eventsourcing.domain import event
from nats.aio.client import Client

from tests.flow import project_all, read_all
from toolkit import (
    BoundedContext,
    IntegrationEvent,
    PublishedLanguage,
    Relay,
    TextAggregate,
    contract,
)
from toolkit.read.projection import Projection
from toolkit.read.reader import StreamReader
from toolkit.read.translator import Translator
from toolkit.readmodels import Connection
from toolkit.readmodels.sqlite import SQLiteHome
from toolkit.wire import encode_token

AWKWARD_IDS = [
    "tea.green",
    "half*price",
    "a>b",
    "gift box",
    "crème brûlée",
    "*",
    ">",
    "a.*.>",
    "tab\tand\nnewline",
    "%2E",
    "plain-id_1",
]


class Product(TextAggregate):
    """An aggregate whose id is its SKU, whatever characters that holds."""

    @staticmethod
    def create_id(sku: str, name: str) -> str:
        return sku

    @event("Listed")
    def __init__(self, sku: str, name: str) -> None:
        self.sku = sku
        self.name = name


language = PublishedLanguage("catalog")


@contract("catalog.ProductListed")
class ProductListed(IntegrationEvent, frozen=True, kw_only=True):
    sku: str
    name: str


@language.maps(Product.Listed, to=ProductListed, aggregate="product")  # type: ignore[attr-defined]
def product_listed(e: Any) -> ProductListed:
    return ProductListed(sku=e.sku, name=e.name)


class Catalog(BoundedContext[str]):
    name = "catalog"
    published_language = language


listings = Translator("catalog")


class Listed(msgspec.Struct):
    sku: str
    name: str


@listings.on(ProductListed)
def listed(e: ProductListed) -> Listed:
    return Listed(e.sku, e.name)


class Shelf(Projection):
    name: ClassVar[str] = "shelf"
    translators = (listings,)

    def create_tables(self, db: Connection) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS item (sku TEXT PRIMARY KEY, name TEXT)")

    def apply(self, fact: object, db: Connection) -> None:
        assert isinstance(fact, Listed)
        db.execute("INSERT INTO item VALUES (?, ?)", (fact.sku, fact.name))


@pytest.fixture
def catalog(data_dir: Path, log_env: dict[str, str]) -> Iterator[Catalog]:
    app = Catalog(env=log_env, data_dir=data_dir)
    yield app
    app.close()


async def test_awkward_ids_are_stored_relayed_and_consumed_intact(
    catalog: Catalog, nc: Client, data_dir: Path
) -> None:
    for sku in AWKWARD_IDS:
        catalog.save(Product(sku=sku, name=f"name of {sku}"))
    assert {catalog.repository.get(sku).name for sku in AWKWARD_IDS} == {
        f"name of {sku}" for sku in AWKWARD_IDS
    }
    await Relay(catalog, nc).run(until_head=True)

    messages = await read_all(nc, "catalog")
    assert [m.subject for m in messages] == [
        f"catalog.product.{encode_token(sku)}.ProductListed" for sku in AWKWARD_IDS
    ]
    assert all(len(m.subject.split(".")) == 4 for m in messages)
    assert [orjson.loads(m.data)["subject"] for m in messages] == AWKWARD_IDS

    await project_all(Shelf(), data_dir, nc)
    with SQLiteHome(data_dir, "shelf").reader() as db:
        assert db is not None
        rows = dict(db.execute("SELECT sku, name FROM item"))
    assert rows == {sku: f"name of {sku}" for sku in AWKWARD_IDS}


@pytest.mark.parametrize("sku", AWKWARD_IDS)
async def test_each_subject_matches_only_its_own_aggregate(
    sku: str, catalog: Catalog, nc: Client
) -> None:
    for other in AWKWARD_IDS:
        catalog.save(Product(sku=other, name=other))
    await Relay(catalog, nc).run(until_head=True)
    own = f"catalog.product.{encode_token(sku)}.>"
    async with StreamReader(nc, "catalog", filter_subjects=[own]) as reader:
        batch = await reader.next_batch(max_wait=5)
        assert await reader.next_batch(max_wait=0.2) == []
    assert [orjson.loads(m.data)["subject"] for m in batch] == [sku]
