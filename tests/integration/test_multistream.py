"""A projection may read several streams, with a checkpoint for each."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext

from tests.envelopes import relayed
from tests.flow import project_all
from toolkit import IntegrationEvent, StreamSpec, contract, ensure_stream
from toolkit.read.projection import Projection
from toolkit.read.translator import Translator
from toolkit.readmodels import Connection
from toolkit.readmodels.sqlite import SQLiteHome

sales, catalog = Translator("sales"), Translator("catalog")


@contract("sales.OrderPlaced", version=1)
class OrderPlaced(IntegrationEvent, frozen=True, kw_only=True):
    order_id: str


@contract("catalog.ProductListed", version=1)
class ProductListed(IntegrationEvent, frozen=True, kw_only=True):
    sku: str


class Seen(msgspec.Struct, frozen=True):
    source: str
    key: str


@sales.on(OrderPlaced)
def order(e: OrderPlaced) -> Seen:
    return Seen("sales", e.order_id)


@catalog.on(ProductListed)
def product(e: ProductListed) -> Seen:
    return Seen("catalog", e.sku)


class Activity(Projection):
    name: ClassVar[str] = "activity"
    translators = (sales, catalog)

    def create_tables(self, db: Connection) -> None:
        db.execute(
            "CREATE TABLE IF NOT EXISTS seen (source TEXT, key TEXT, PRIMARY KEY (source, key))"
        )

    def apply(self, fact: object, db: Connection) -> None:
        assert isinstance(fact, Seen)
        db.execute("INSERT INTO seen VALUES (?, ?)", (fact.source, fact.key))


async def publish(js: JetStreamContext, context: str, position: int, type_: str, key: str) -> None:
    """The relay of ``context`` publishes its event at log ``position``."""
    field = "order_id" if context == "sales" else "sku"
    subject, body, headers = relayed(
        context, position, type_, {field: key}, aggregate_id=key, aggregate_type="thing"
    )
    await js.publish(subject, body, headers=headers)


async def test_each_stream_has_its_own_checkpoint(nc: Client, data_dir: Path) -> None:
    js = nc.jetstream()
    for context in ("sales", "catalog"):
        await ensure_stream(js, StreamSpec(context))
    for i in range(5):
        await publish(js, "sales", i + 1, "sales.OrderPlaced", f"o{i}")
    for i in range(3):
        await publish(js, "catalog", i + 1, "catalog.ProductListed", f"p{i}")
    stats = await project_all(Activity(), data_dir, nc)
    assert stats.checkpoints == {"sales": 5, "catalog": 3}
    await publish(js, "catalog", 9, "catalog.ProductListed", "p9")
    stats = await project_all(Activity(), data_dir, nc)  # a restart: each from its own place
    assert stats.checkpoints == {"sales": 5, "catalog": 4} and stats.applied == 1
    with SQLiteHome(data_dir, "activity").reader() as db:
        assert db is not None
        rows = set(db.execute("SELECT source, key FROM seen"))
    assert rows == {("sales", f"o{i}") for i in range(5)} | {
        ("catalog", f"p{i}") for i in (0, 1, 2, 9)
    }
