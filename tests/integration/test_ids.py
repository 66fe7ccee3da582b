"""Aggregate ids are checked when a command saves, on every log alike: an empty id, or one
whose subject token would be longer than the toolkit's limit (beyond it, nats-server
closes the connection of whoever publishes it), is refused with InvalidCommand and
nothing is stored; ids up to the limit are stored, relayed and consumed intact."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from nats.aio.client import Client

from tests.conftest import POSTGRES, postgres
from tests.flow import project_all, read_all
from tests.integration.test_subjects import Catalog, Product, Shelf
from toolkit import InvalidCommand, Relay
from toolkit.nats.embedded import EmbeddedServer
from toolkit.read.reader import StreamReader
from toolkit.readmodels.sqlite import SQLiteHome
from toolkit.wire import encode_token

TOO_LONG = [
    "中" * 114,  # 1026 characters once encoded: just over the limit
    "a" * 1025,
    " " * 342,
    "中" * 500,  # 4500: the server closes the connection that publishes its subject
    "x" * 5000,
]
AT_THE_LIMIT = [  # 1024 characters each once encoded
    "a" * 1024,
    " " * 341 + "a",
    "中" * 113 + "abcdefg",
    "é" * 169 + ".*>a",
    "🙂" * 84 + "%2E" + "b" * 11,
]


@pytest.fixture(params=["sqlite", "postgres", "jetstream"])
def catalog(
    request: pytest.FixtureRequest, data_dir: Path, nats_server: EmbeddedServer
) -> Iterator[Catalog]:
    """The catalog context (products known by text ids) on each kind of log."""
    env = {"ORIGINATOR_ID_TYPE": "text"}
    if request.param == "jetstream":
        env |= {"PERSISTENCE_MODULE": "toolkit.logs.jetstream", "NATS_URL": nats_server.url}
    if request.param != "postgres":
        app = Catalog(env=env, data_dir=data_dir)
        yield app
        app.close()
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with postgres("test", "the postgres log") as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            env |= {"PERSISTENCE_MODULE": "eventsourcing.postgres", **POSTGRES}
            app = Catalog(env={**env, "POSTGRES_SCHEMA": schema}, data_dir=data_dir)
            yield app
            app.close()
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


async def relayed_subjects(catalog: Catalog, nc: Client) -> list[str]:
    """Relay the whole log (within 30 s: a relay stuck on a closed connection fails the
    test) and return the aggregate ids the stream holds, in order."""
    await asyncio.wait_for(Relay(catalog, nc).run(until_head=True), 30)
    return [orjson.loads(m.data)["subject"] for m in await read_all(nc, "catalog")]


async def test_an_empty_id_is_refused_alike_on_every_log(catalog: Catalog, nc: Client) -> None:
    catalog.save(Product(sku="before", name="before"))
    head = catalog.recorder.max_notification_id()

    with pytest.raises(InvalidCommand, match="must not be empty"):
        catalog.save(Product(sku="", name="nameless"))

    assert catalog.recorder.max_notification_id() == head  # nothing was stored
    catalog.save(Product(sku="after", name="after"))
    assert await relayed_subjects(catalog, nc) == ["before", "after"]


async def test_an_id_too_long_for_a_subject_is_refused_alike_on_every_log(
    catalog: Catalog, nc: Client
) -> None:
    catalog.save(Product(sku="before", name="before"))
    head = catalog.recorder.max_notification_id()

    for sku in TOO_LONG:
        with pytest.raises(InvalidCommand, match="more than 1024"):
            catalog.save(Product(sku=sku, name="too long"))

    assert catalog.recorder.max_notification_id() == head
    catalog.save(Product(sku="after", name="after"))  # the log takes the next save
    assert await relayed_subjects(catalog, nc) == ["before", "after"]


async def test_ids_up_to_the_limit_are_stored_relayed_and_consumed_intact(
    catalog: Catalog, nc: Client, data_dir: Path
) -> None:
    for sku in AT_THE_LIMIT:
        assert len(encode_token(sku)) == 1024
        catalog.save(Product(sku=sku, name=f"name of {sku}"))
    assert {catalog.repository.get(sku).name for sku in AT_THE_LIMIT} == {
        f"name of {sku}" for sku in AT_THE_LIMIT
    }

    assert await relayed_subjects(catalog, nc) == AT_THE_LIMIT
    for sku in AT_THE_LIMIT:  # a subject filter on one aggregate matches only it
        own = f"catalog.product.{encode_token(sku)}.>"
        async with StreamReader(nc, "catalog", filter_subjects=[own]) as reader:
            batch = await reader.next_batch(max_wait=5)
            assert await reader.next_batch(max_wait=0.1) == []
        assert [orjson.loads(m.data)["subject"] for m in batch] == [sku]

    await project_all(Shelf(), data_dir, nc)
    with SQLiteHome(data_dir, "shelf").reader() as db:
        assert db is not None
        rows = dict(db.execute("SELECT sku, name FROM item"))
    assert rows == {sku: f"name of {sku}" for sku in AT_THE_LIMIT}
