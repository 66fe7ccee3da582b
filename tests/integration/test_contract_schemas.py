"""The contract schemas are true: every message the example system publishes, data at the
limits included, is valid against its contract version's JSON Schema (and its envelope
against the envelope's); ``toolkit serve`` answers each schema at its URL, cacheable, and
an unknown or hostile URL with a problem document, never a 500."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import orjson
import pytest

from contexts.billing import Billing
from contexts.sales import Sales
from contexts.shipping import Shipping
from contexts.system import system
from tests.conftest import serving
from tests.flow import read_all
from toolkit.config import Settings
from toolkit.http.app import create_app
from toolkit.http.contracts import schema_path
from toolkit.nats.connection import connect
from toolkit.nats.embedded import EmbeddedServer
from toolkit.wire import envelope_json_schema
from toolkit.wire.schemas import contract_schema, published
from toolkit.write.relay import Relay

pytestmark = pytest.mark.timeout(90)

HUGE = Decimal("123456789012345678901234567890.123456789012345678901234567890")
TINY = Decimal("0.000000000000000000000000000001")
HOSTILE = [
    ("/contracts/nowhere", 404),
    ("/contracts/nowhere/OrderPlaced/v1", 404),
    ("/contracts/sales/OrderPlaced/v2", 404),
    ("/contracts/sales/OrderPlaced/v0", 404),
    ("/contracts/sales/OrderPlaced/v-1", 404),
    ("/contracts/sales/InvoicePaid/v1", 404),  # billing's, not sales'
    ("/contracts/sales/OrderPlaced/v99999999999999999999999999", 404),
    ("/contracts/sales/OrderPlaced/vone", 422),
    ("/contracts/sales/OrderPlaced/1", 404),
    ("/contracts/..", 404),
    ("/contracts/%2E%2E/OrderPlaced/v1", 404),
    ("/contracts/sales/Order%2FPlaced/v1", 404),
    ("/contracts/sales%2FOrderPlaced/v1", 200),  # decoded before routing: the same URL
    ("/contracts/sales/..%2F..%2Fetc%2Fpasswd/v1", 404),
    ("/contracts/sales/%00/v1", 404),
    (f"/contracts/{'s' * 20_000}", 404),
    (f"/contracts/sales/{'O' * 20_000}/v1", 404),
    ("/contracts/sales/OrderPlaced/v1?x=1", 400),
]
"""Paths and the status each must get: 404 or 422 (400 for an unknown parameter), never
a 500."""
SKUS = ["tea.green", "mug*blue", "pot>large", "100%cotton", "çay.🍵.ß"]


def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def drive(data_dir: Path) -> None:
    """Every contract of the example once or more, with data at the limits: unicode names,
    decimals of 60 digits and of 30 decimal places, SKUs with subject wildcards, a dot and
    a percent sign."""
    sales, shipping, billing = (Sales(data_dir=data_dir), Shipping(data_dir=data_dir),
                                Billing(data_dir=data_dir))  # fmt: skip
    try:
        customer = sales.register_customer("Zoë Ångström-李 🍵", "zoë@例え.jp")
        for sku in SKUS:
            sales.list_product(sku, f"Ürün {sku}", HUGE)
            sales.reprice_product(sku, TINY)
        lines = [{"sku": sku, "quantity": 2**62, "unit_price": str(HUGE)} for sku in SKUS]
        kept = sales.place_order(customer, lines)
        dropped = sales.place_order(customer, [{"sku": "tea.green", "quantity": 1,
                                                "unit_price": "0"}])  # fmt: skip
        sales.cancel_order(dropped, "changed her mind: ¯\\_(ツ)_/¯")
        shipment = shipping.request_shipment(kept, customer, 2**62)
        shipping.dispatch_shipment(shipment, "Poste 🇫🇷")
        sales.mark_order_shipped(kept, shipment, "Poste 🇫🇷")
        billing.pay_invoice(billing.issue_invoice(kept, customer, HUGE * 5))
    finally:
        for context in (sales, shipping, billing):
            context.close()


async def test_every_published_message_is_valid_against_its_contract_schema(
    nats_server: EmbeddedServer, data_dir: Path
) -> None:
    drive(data_dir)
    schemas = {
        (p.name, p.version): validator(contract_schema(p.contract)) for p in published(system)
    }
    envelope = validator(envelope_json_schema())
    seen: Counter[tuple[str, int]] = Counter()
    nc = await connect(nats_server.url)
    try:
        for name in ("sales", "shipping", "billing"):
            context = system.contexts[name](data_dir=data_dir)
            try:
                await Relay(context, nc).run(until_head=True)
            finally:
                context.close()
            for message in await read_all(nc, name):
                body = orjson.loads(message.data)
                assert not [e.message for e in envelope.iter_errors(body)], body
                key = (body["type"], body["schemaversion"])
                problems = [
                    f"{e.json_path}: {e.message}" for e in schemas[key].iter_errors(body["data"])
                ]
                assert not problems, (key, body["data"])
                seen[key] += 1
    finally:
        await nc.close()
    assert set(seen) == set(schemas), f"contracts not exercised: {set(schemas) - set(seen)}"
    assert seen["sales.ProductRepriced", 1] == len(SKUS)


def test_a_schema_refuses_what_a_consumer_would_not_read() -> None:
    """The checks above are not vacuous: a wrong type, a missing field, a datetime
    without its time and a non-canonical UUID each fail the schema."""
    (placed,) = [p.contract for p in published(system) if p.name == "sales.OrderPlaced"]
    check = validator(contract_schema(placed))
    good = {
        "order_id": "5f0c6f39-7a4f-4b8e-9a51-2d4b0b7f0c11",
        "customer_id": "5f0c6f39-7a4f-4b8e-9a51-2d4b0b7f0c12",
        "lines": [{"sku": "a", "quantity": 1, "unit_price": "1.5"}],
        "total": "1.5",
        "placed_at": "2026-11-24T06:00:00.123456Z",
    }
    assert check.is_valid(good)
    assert check.is_valid(good | {"placed_at": "2026-11-24T06:00:00"})  # a naive one
    for bad in (
        good | {"lines": [{"sku": "a", "quantity": "1", "unit_price": "1.5"}]},
        {k: v for k, v in good.items() if k != "total"},
        good | {"placed_at": "2026-11-24"},
        good | {"order_id": "not-a-uuid"},
    ):
        assert not check.is_valid(bad), bad


async def test_serve_answers_each_schema_and_a_problem_for_unknown_or_hostile_urls(
    nats_server: EmbeddedServer, data_dir: Path
) -> None:
    settings = Settings(nats_url=nats_server.url, data_dir=data_dir)
    async with (
        serving(create_app(system, settings, relay=False)) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
    ):
        index = await http.get("/contracts")
        assert index.status_code == 200 and index.headers["cache-control"] == "no-cache"
        listed = {c["context"]: c for c in index.json()["contexts"]}
        assert set(listed) == set(system.contexts)
        for entry in published(system):
            path = schema_path(entry.context, entry.name, entry.version)
            mine = await http.get(f"/contracts/{entry.context}")
            assert {"name": entry.name, "version": entry.version, "url": path} in (
                mine.json()["contracts"]
            )
            assert mine.json() == {
                "context": entry.context,
                **{"contracts": listed[entry.context]["contracts"]},
            }
            answer = await http.get(path)
            assert answer.status_code == 200, answer.text
            assert answer.headers["content-type"] == "application/schema+json"
            assert answer.json() == contract_schema(entry.contract)
            again = await http.get(path, headers={"If-None-Match": answer.headers["etag"]})
            assert again.status_code == 304 and again.content == b""
        for path, status in HOSTILE:
            answer = await http.get(path)
            assert answer.status_code == status, (path, answer.text[:300])
            if status != 200:
                assert answer.headers["content-type"] == "application/problem+json"
                assert answer.json()["status"] == status
        openapi = (await http.get("/openapi.json")).json()["paths"]
        assert "/contracts/{context}/{event}/v{version}" in openapi and "/contracts" in openapi
