"""Command bodies are as strict as query parameters (issue 18, case 12): no value of
another type is coerced and an unknown field is refused, 422 naming it; ids and prices,
which JSON has no type for, come as text."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from contexts.system import system
from toolkit.config import Settings
from toolkit.http.app import create_app

pytestmark = pytest.mark.timeout(30)

CUSTOMER = "00000000-0000-4000-8000-000000000000"
LINE = {"sku": "tea", "quantity": 2, "unit_price": "2.50"}


@pytest.fixture
async def http(tmp_path: Path) -> httpx.AsyncClient:
    app = create_app(system, Settings(data_dir=tmp_path / "data"), relay=False)
    transport = httpx.ASGITransport(app=app)  # no lifespan: commands need no relay
    return httpx.AsyncClient(transport=transport, base_url="http://api")


def _order(**line: object) -> dict[str, object]:
    return {"customer_id": CUSTOMER, "lines": [LINE | line]}


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        ("/sales/orders", _order(quantity="2"), "body.lines.0.quantity"),
        ("/sales/orders", _order(quantity=2.0), "body.lines.0.quantity"),
        ("/sales/orders", _order(quantity=True), "body.lines.0.quantity"),
        ("/sales/orders", _order(sku=7), "body.lines.0.sku"),
        ("/sales/orders", _order(unit_price=True), "body.lines.0.unit_price"),
        ("/sales/orders", _order(discount="1.00"), "body.lines.0.discount"),
        ("/sales/orders", _order() | {"rush": True}, "body.rush"),
        ("/sales/customers", {"name": "Ann", "email": "a@x.org", "vip": 1}, "body.vip"),
        ("/sales/customers", {"name": 5, "email": "a@x.org"}, "body.name"),
        ("/sales/products", {"sku": "tea", "name": "Tea", "unit_price": "1", "x": 0}, "body.x"),
        ("/sales/products/repricing", {"sku": 1, "unit_price": "1.00"}, "body.sku"),
        (f"/sales/orders/{CUSTOMER}/cancellation", {"reason": "late", "by": "me"}, "body.by"),
    ],
)
async def test_a_body_of_the_wrong_shape_is_refused_naming_the_field(
    http: httpx.AsyncClient, path: str, body: dict[str, object], where: str
) -> None:
    async with http:
        answer = await http.post(path, json=body)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert where in [e["where"] for e in answer.json()["errors"]], answer.text
    assert where in answer.json()["detail"]


async def test_ids_and_prices_come_as_text_or_numbers(http: httpx.AsyncClient) -> None:
    async with http:
        customer = await http.post("/sales/customers", json={"name": "Ann", "email": "a@x.org"})
        assert customer.status_code == 201, customer.text
        for price in ("2.50", 2.5, 2):
            order = {"customer_id": customer.json()["id"], "lines": [LINE | {"unit_price": price}]}
            placed = await http.post("/sales/orders", json=order)
            assert placed.status_code == 201, placed.text
