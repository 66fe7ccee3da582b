"""Aggregates with text ids, the first-class way (toolkit.TextAggregate in a context typed
BoundedContext[UUID | str]): sales' products, known by SKUs from a wide alphabet, live in
one log beside UUID-keyed customers and orders, and reach the stream under subjects that
match exactly themselves; the API refuses what the log would refuse, with 422."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import orjson
import pytest
from nats.aio.client import Client

from contexts.sales import Product, Sales
from contexts.system import system
from tests.conftest import eventually, serving
from tests.flow import read_all
from toolkit import ConfigurationError, InvalidCommand, Relay
from toolkit.config import Settings
from toolkit.errors import SubjectError
from toolkit.http.app import create_app
from toolkit.nats.embedded import EmbeddedServer
from toolkit.read.reader import StreamReader
from toolkit.wire import MAX_ID_TOKEN, encode_token

ALPHABET = (
    "abcXYZ019_-"  # these stand as they are in a subject
    ".*>%~ /\\:;,!?'\"#$&()+=@[]^`{|}\t\n\x7f"  # wildcards, separators, escapes
    "éüßøÅçñ"  # Latin
    "ΩЖשع"  # Greek, Cyrillic, and right-to-left Hebrew and Arabic
    "नमस्ते"  # Devanagari, with combining vowel signs
    "中文字绿茶日本語한국어"  # CJK and Hangul
    "\u0301\u200d\u200f\u2028\ufeff\ufffd"  # combining acute, ZWJ, RLM, line separator, BOM
    "🙂👍🏽🇯🇵𝄞"  # astral: emoji, a modifier, a flag, a musical symbol
)


def wide_ids(count: int, seed: int = 16) -> list[str]:
    """Distinct ids drawn from ALPHABET, of every length up to the limit (some exactly at
    it), plus the ones that look most like subject syntax."""
    rng = random.Random(seed)
    ids = [".", "*", ">", "%", " ", "%2E", "a.*.>", " leading and trailing ", "绿茶.500g"]
    while len(ids) < count:
        sku = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 400)))
        while not fits(sku):
            sku = sku[:-1]
        if sku and rng.random() < 0.2:  # fill up to exactly the limit
            sku += "a" * (MAX_ID_TOKEN - len(encode_token(sku)))
        if sku and sku not in ids:
            ids.append(sku)
    return ids


def fits(sku: str) -> bool:
    try:
        encode_token(sku)
    except SubjectError:
        return False
    return True


async def test_products_with_text_ids_reach_the_stream_under_subjects_of_their_own(
    sales: Sales, nc: Client
) -> None:
    skus = wide_ids(60)
    assert any(len(encode_token(sku)) == MAX_ID_TOKEN for sku in skus)
    customer = sales.register_customer("Ann", "ann@example.org")  # UUIDs in the same log
    for number, sku in enumerate(skus):
        sales.list_product(sku, f"product {number}", Decimal("1.00"))
        if number % 3 == 0:
            sales.reprice_product(sku, Decimal("2.50"))
    order = sales.place_order(customer, [{"sku": skus[0], "quantity": 1, "unit_price": "2.50"}])
    assert all(sales.get_product(sku).sku == sku for sku in skus)  # each loads back as itself

    await asyncio.wait_for(Relay(sales, nc).run(until_head=True), 60)

    events: dict[str, list[str]] = defaultdict(list)
    for message in await read_all(nc):
        envelope = orjson.loads(message.data)
        kind = envelope["type"].removeprefix("sales.")
        if kind.startswith("Product"):
            sku = envelope["subject"]
            assert envelope["data"]["sku"] == sku
            assert message.subject == f"sales.product.{encode_token(sku)}.{kind}"
            events[sku].append(kind)
        else:
            assert UUID(envelope["subject"]) in (customer, order)
            assert message.subject.split(".")[2] == envelope["subject"]
    assert list(events) == skus
    for number, sku in enumerate(skus):
        repriced = ["ProductRepriced"] if number % 3 == 0 else []
        assert events[sku] == ["ProductListed", *repriced]

    for sku in skus:  # each aggregate's filter matches its own events and nothing else
        own = f"sales.product.{encode_token(sku)}.>"
        async with StreamReader(nc, "sales", filter_subjects=[own]) as reader:
            batch = await reader.next_batch(max_wait=5)
            while len(batch) < len(events[sku]):
                batch += await reader.next_batch(max_wait=5)
            assert await reader.next_batch(max_wait=0.05) == []
        assert {orjson.loads(m.data)["subject"] for m in batch} == {sku}


@pytest.mark.parametrize(
    ("sku", "why"),
    [
        ("", "must not be empty"),
        ("中" * 114, "takes 1026 once encoded for a subject, more than 1024"),
        ("a\x00b", "must not contain NUL"),
        ("\ud800", "lone surrogate"),
    ],
)
def test_a_sku_the_log_could_not_keep_alike_is_refused(sales: Sales, sku: str, why: str) -> None:
    with pytest.raises(InvalidCommand, match=why):
        sales.list_product(sku, "refused", Decimal(1))
    assert sales.recorder.max_notification_id() is None


def test_a_context_with_text_ids_refuses_a_log_configured_for_uuids(data_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match="ORIGINATOR_ID_TYPE is 'uuid'"):
        Sales(env={"SALES_ORIGINATOR_ID_TYPE": "uuid"}, data_dir=data_dir)


def test_a_text_id_has_its_own_type(data_dir: Path) -> None:
    product = Product(id="tea.green", name="Green tea", unit_price=Decimal("1.25"))
    assert (product.id, product.sku, product.version) == ("tea.green", "tea.green", 1)
    with pytest.raises(TypeError, match="needs a str originator_id"):
        Product(id=UUID(int=1), name="a UUID", unit_price=Decimal(1))  # type: ignore[arg-type]


async def test_the_api_lists_products_by_any_sku_and_refuses_the_rest_with_422(
    nats_server: EmbeddedServer, data_dir: Path
) -> None:
    settings = Settings(nats_url=nats_server.url, data_dir=data_dir)
    async with (
        serving(create_app(system, settings)) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
    ):
        sku = "gift box 10%.*> 绿茶"
        listed = await http.post(
            "/sales/products", json={"sku": sku, "name": "Gift box", "unit_price": "9.90"}
        )
        assert listed.status_code == 201, listed.text
        assert listed.json() == {"sku": sku, "consistency_token": "sales:1"}

        again = await http.post(
            "/sales/products", json={"sku": sku, "name": "Again", "unit_price": "1.00"}
        )
        assert again.status_code == 409, again.text
        repriced = await http.post(
            "/sales/products/repricing", json={"sku": sku, "unit_price": "8.00"}
        )
        assert repriced.status_code == 200, repriced.text
        unknown = await http.post(
            "/sales/products/repricing", json={"sku": "no such", "unit_price": "8.00"}
        )
        assert unknown.status_code == 422 and "no product" in unknown.json()["detail"]

        for bad, why in [("", "must not be empty"), ("中" * 114, "more than 1024")]:
            refused = await http.post(
                "/sales/products", json={"sku": bad, "name": "Bad", "unit_price": "1.00"}
            )
            assert refused.status_code == 422, refused.text
            assert refused.headers["content-type"] == "application/problem+json"
            assert why in refused.json()["detail"]

        async def relayed() -> list[dict[str, Any]] | None:  # by the API's relay
            events: list[dict[str, Any]] = (await http.get("/feed/sales")).json()["events"]
            return events if len(events) == 2 else None

        feed = await eventually(relayed)
        assert [(e["subject"], e["event"]["subject"]) for e in feed] == [
            (f"sales.product.{encode_token(sku)}.ProductListed", sku),
            (f"sales.product.{encode_token(sku)}.ProductRepriced", sku),
        ]
