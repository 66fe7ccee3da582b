"""The API at the boundary, over a real uvicorn server: commands answer with consistency
tokens that reads honour, ETags and 304, bad input as problem details, bearer auth,
health, readiness and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from contexts.system import system
from projections.shipping import Shipments
from tests.conftest import serving
from toolkit.config import Settings
from toolkit.http.app import create_app
from toolkit.nats.connection import connect
from toolkit.nats.embedded import EmbeddedServer
from toolkit.read.projector import Projector
from toolkit.read.store import ReadModelStore
from toolkit.readmodels.sqlite import SQLiteHome
from toolkit.system import System

pytestmark = pytest.mark.timeout(90)

LINE = {"sku": "tea", "quantity": 3, "unit_price": "2.50"}
PROBLEM = "application/problem+json"


@dataclass
class Api:
    http: httpx.AsyncClient
    settings: Settings
    stop_projector: Callable[[], Awaitable[None]]


@contextlib.asynccontextmanager
async def shipping_projector(
    settings: Settings,
) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Shipping's projector running beside the API, as `toolkit project shipping` would;
    yields a function that stops it and returns once it has stopped."""
    stop = asyncio.Event()
    client = await connect(str(settings.nats_url))
    home = SQLiteHome(settings.data_dir, "shipping")
    with home.writer_lock():
        store = ReadModelStore(home.live(), Shipments())
        task = asyncio.create_task(Projector(Shipments(), store, client).run(stop, home=home))

        async def stop_it() -> None:
            stop.set()
            await task

        try:
            yield stop_it
        finally:
            stop.set()
            await task
            store.close()
            with contextlib.suppress(ConnectionError):  # nats-py, when the server just went
                await client.close()


@contextlib.asynccontextmanager
async def api(
    nats_server: EmbeddedServer, data_dir: Path, serves: System = system, **settings: object
) -> AsyncIterator[Api]:
    """The API of ``serves`` (sales' relay runs in it) and shipping's projector."""
    config = Settings(nats_url=nats_server.url, data_dir=data_dir, **settings)  # type: ignore[arg-type]
    app = create_app(serves, config)
    async with (
        serving(app) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
        shipping_projector(config) as stop,
    ):
        yield Api(http, config, stop)


async def place_order(http: httpx.AsyncClient) -> tuple[str, str, str]:
    """(customer id, order id, consistency token) of a new customer's first order."""
    customer = await http.post("/sales/customers", json={"name": "Ann", "email": "a@x.org"})
    assert customer.status_code == 201, customer.text
    order = await http.post(
        "/sales/orders", json={"customer_id": customer.json()["id"], "lines": [LINE]}
    )
    assert order.status_code == 201, order.text
    token = order.headers["consistency-token"]
    assert order.json()["consistency_token"] == token
    return customer.json()["id"], order.json()["id"], token


async def test_a_read_with_the_token_of_the_write_just_made_sees_it(
    nats_server: EmbeddedServer, data_dir: Path
) -> None:
    async with api(nats_server, data_dir) as a:
        customer = await a.http.post("/sales/customers", json={"name": "Bo", "email": "b@x.org"})
        assert customer.headers["consistency-token"].startswith("sales:")
        seen = 0
        for i in range(100):
            order = await a.http.post(
                "/sales/orders",
                json={"customer_id": customer.json()["id"], "lines": [LINE | {"quantity": i + 1}]},
            )
            token = order.headers["consistency-token"]
            read = await a.http.get(
                f"/shipping/shipments/{order.json()['id']}", headers={"Consistency-Token": token}
            )
            assert read.status_code == 200, read.text
            assert read.json()["items"] == i + 1
            seen += 1
        assert seen == 100

        # Cancelling answers with a later token; the read with it sees the cancellation.
        cancelled = await a.http.post(
            f"/sales/orders/{order.json()['id']}/cancellation", json={"reason": "changed mind"}
        )
        assert cancelled.status_code == 200
        later = cancelled.headers["consistency-token"]
        assert int(later.split(":")[1]) > int(token.split(":")[1])
        read = await a.http.get(
            f"/shipping/shipments/{order.json()['id']}", headers={"Consistency-Token": later}
        )
        assert read.json()["status"] == "called_off"


async def test_a_token_not_yet_applied_gets_503_with_the_position_reached(
    nats_server: EmbeddedServer, data_dir: Path
) -> None:
    async with api(nats_server, data_dir) as a:
        _, first, token = await place_order(a.http)
        applied = await a.http.get(
            f"/shipping/shipments/{first}", headers={"Consistency-Token": token}
        )
        assert applied.status_code == 200
        await a.stop_projector()  # shipping stops projecting
        _, second, later = await place_order(a.http)
        behind = await a.http.get(
            f"/shipping/shipments/{second}",
            headers={"Consistency-Token": later, "Prefer": "wait=0.3"},
        )
        assert behind.status_code == 503
        assert behind.headers["content-type"] == PROBLEM
        assert behind.headers["retry-after"] == "1"
        reached = behind.headers["consistency-token"]
        assert reached == token  # where it stopped: the first order's position
        assert f"not yet {later}" in behind.json()["detail"]
        # A token of a save that published nothing has nothing to wait for.
        empty = await a.http.get(
            f"/shipping/shipments/{first}", headers={"Consistency-Token": "sales:0"}
        )
        assert empty.status_code == 200


async def test_an_unchanged_resource_answers_304_to_its_etag(
    nats_server: EmbeddedServer, data_dir: Path
) -> None:
    async with api(nats_server, data_dir) as a:
        _, order, token = await place_order(a.http)
        url = f"/shipping/shipments/{order}"
        first = await a.http.get(url, headers={"Consistency-Token": token})
        tag = first.headers["etag"]
        assert tag.startswith('W/"') and first.headers["cache-control"] == "no-cache"
        again = await a.http.get(url, headers={"If-None-Match": tag})
        assert again.status_code == 304 and again.content == b""
        assert again.headers["etag"] == tag
        listed = await a.http.get("/shipping/shipments", headers={"If-None-Match": tag})
        assert listed.status_code == 304  # the tag names the model's state, not one item

        _, _, later = await place_order(a.http)
        changed = await a.http.get(url, headers={"If-None-Match": tag, "Consistency-Token": later})
        assert changed.status_code == 200 and changed.headers["etag"] != tag
        assert changed.json() == first.json()


async def test_bad_input_gets_the_right_4xx_with_a_problem_document(
    nats_server: EmbeddedServer, data_dir: Path
) -> None:
    async with api(nats_server, data_dir) as a:
        customer, order, _ = await place_order(a.http)
        orders = "/sales/orders"
        item = f"/shipping/shipments/{order}"

        def get(path: str, **headers: str) -> httpx.Request:
            return a.http.build_request("GET", path, headers=headers)

        def post(path: str, body: object) -> httpx.Request:
            if isinstance(body, bytes):
                json = {"content-type": "application/json"}
                return a.http.build_request("POST", path, content=body, headers=json)
            return a.http.build_request("POST", path, json=body)

        def order_with(**line: object) -> dict[str, object]:
            return {"customer_id": customer, "lines": [LINE | line]}

        wait_soon = {"Consistency-Token": "sales:1", "Prefer": "wait=soon"}
        cases: list[tuple[str, httpx.Request, int, str]] = [
            ("malformed id", get("/shipping/shipments/12"), 422, "path.shipment_id"),
            ("unknown filter", get("/shipping/shipments?colour=red"), 400, "parameter 'colour'"),
            ("oversize limit", get("/shipping/shipments?limit=5000"), 422, "query.limit"),
            ("unknown status", get("/shipping/shipments?status=lost"), 422, "query.status"),
            ("bad token", get(item, **{"Consistency-Token": "sales;12"}), 400, "<log position>"),
            ("bad wait", get(item, **wait_soon), 400, "not seconds"),
            ("bad JSON", post(orders, b'{"customer_id": '), 422, "JSON"),
            ("missing field", post(orders, {"customer_id": customer}), 422, "body.lines"),
            ("wrong type", post(orders, order_with(quantity="many")), 422, "quantity"),
            ("negative price", post(orders, order_with(unit_price="-1")), 422, "unit_price"),
            ("no lines", post(orders, {"customer_id": customer, "lines": []}), 422, "body.lines"),
            (
                "unknown customer",
                post(orders, {"customer_id": order, "lines": [LINE]}),
                422,
                f"no customer {order}",
            ),
            (
                "unknown order",
                post(f"{orders}/{customer}/cancellation", {"reason": "x"}),
                404,
                f"no order {customer}",
            ),
            (
                "bad email",
                post("/sales/customers", {"name": "Al", "email": "nowhere"}),
                422,
                "not an email address",
            ),
        ]
        for what, request, status, says in cases:
            response = await a.http.send(request)
            assert response.status_code == status, (what, response.text)
            assert response.headers["content-type"] == PROBLEM, what
            body = response.json()
            assert body["status"] == status and body["title"], what
            assert says in body["detail"], (what, body["detail"])
        # Twice the same cancellation: the second is refused, and nothing is stored twice.
        ok = await a.http.post(f"{orders}/{order}/cancellation", json={"reason": "late"})
        assert ok.status_code == 200
        twice = await a.http.post(f"{orders}/{order}/cancellation", json={"reason": "late"})
        assert twice.status_code == 422 and "already cancelled" in twice.json()["detail"]


async def test_bearer_tokens_guard_everything_but_health_and_are_never_logged(
    nats_server: EmbeddedServer, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cret-token-value"
    caplog.set_level(logging.DEBUG)
    async with api(nats_server, data_dir, api_tokens=("old-token", secret)) as a:
        anonymous = await a.http.get("/shipping/shipments")
        assert anonymous.status_code == 401
        assert anonymous.headers["content-type"] == PROBLEM
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        wrong = await a.http.get("/shipping/shipments", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "nope" not in wrong.text
        basic = await a.http.get("/shipping/shipments", headers={"Authorization": secret})
        assert basic.status_code == 401
        allowed = {"Authorization": f"Bearer {secret}"}
        assert (await a.http.get("/shipping/shipments", headers=allowed)).status_code == 200
        assert (await a.http.get("/health/live")).status_code == 200
        assert secret not in repr(a.settings) and "2 hidden" in repr(a.settings)
    assert secret not in caplog.text


async def test_readiness_and_metrics_say_how_far_projections_are(
    nats_server: EmbeddedServer, data_dir: Path
) -> None:
    # Only shipping's endpoints: readiness waits for every read model the API serves.
    shipping = System(system.contexts, system.projections, {"shipping": system.routers["shipping"]},
                      system.commands)  # fmt: skip
    async with api(nats_server, data_dir, shipping, ready_max_lag=0) as a:
        _, order, token = await place_order(a.http)
        await a.http.get(f"/shipping/shipments/{order}", headers={"Consistency-Token": token})
        ready = await a.http.get("/health/ready")
        assert ready.status_code == 200, ready.text

        metrics = await a.http.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        text = metrics.text
        assert 'toolkit_projection_lag_events{projection="shipping",stream="sales"} 0.0' in text
        assert 'toolkit_projection_checkpoint{projection="shipping",stream="sales"} 2.0' in text
        assert 'toolkit_projection_dead_letters{projection="shipping"} 0.0' in text
        assert (
            'toolkit_http_request_seconds_count{method="GET",'
            'route="/shipping/shipments/{shipment_id}",status="200"} 1.0'
        ) in text

        await a.stop_projector()
        await place_order(a.http)
        relayed = False
        for _ in range(200):  # until the relay has put both new events on the stream
            not_ready = await a.http.get("/health/ready")
            if not_ready.status_code == 503 and "2 events" in not_ready.text:
                relayed = True
                break
            await asyncio.sleep(0.01)
        assert relayed
        reasons = not_ready.json()["reasons"]
        assert reasons == ["projection shipping is 2 events behind sales (at most 0)"]


async def test_lists_page_by_cursor_through_every_item_once(
    nats_server: EmbeddedServer, data_dir: Path
) -> None:
    async with api(nats_server, data_dir) as a:
        customer = await a.http.post("/sales/customers", json={"name": "Cy", "email": "c@x.org"})
        placed = []
        for _ in range(23):
            order = await a.http.post(
                "/sales/orders", json={"customer_id": customer.json()["id"], "lines": [LINE]}
            )
            placed.append(order.json()["id"])
        token = order.headers["consistency-token"]
        await a.http.post(f"/sales/orders/{placed[0]}/cancellation", json={"reason": "no"})

        pages, url = [], f"/shipping/shipments?limit=10&recipient_id={customer.json()['id']}"
        while url:
            page = await a.http.get(url, headers={"Consistency-Token": token})
            assert page.status_code == 200, page.text
            pages.append(page.json()["items"])
            cursor = page.json()["next"]
            assert (cursor is None) == ("link" not in page.headers)
            url = f"/shipping/shipments?limit=10&cursor={cursor}" if cursor else ""
        assert [len(p) for p in pages] == [10, 10, 3]
        listed = [item["shipment_id"] for p in pages for item in p]
        assert sorted(listed) == sorted(placed)  # each once
        keys = [(item["since"], item["shipment_id"]) for p in pages for item in p]
        assert keys == sorted(keys)

        awaiting = await a.http.get("/shipping/shipments", params={"status": "awaiting_dispatch"})
        assert placed[0] not in {item["shipment_id"] for item in awaiting.json()["items"]}

        for cursor in ("bm9wZQ", "!!!", "W10", '["a"]'):
            bad = await a.http.get("/shipping/shipments", params={"cursor": cursor})
            assert bad.status_code == 400 and "is not one this API gave" in bad.json()["detail"]
        zero = await a.http.get("/shipping/shipments", params={"limit": 0})
        assert zero.status_code == 422 and "query.limit" in zero.json()["detail"]
        who = await a.http.get("/shipping/shipments", params={"recipient_id": "me"})
        assert who.status_code == 422 and "query.recipient_id" in who.json()["detail"]

        schema = (await a.http.get("/openapi.json")).json()
        page_schema = schema["components"]["schemas"]["ShipmentPage"]
        assert page_schema["properties"]["items"]["items"] == {
            "$ref": "#/components/schemas/Shipment"
        }
        listed_params = {
            p["name"] for p in schema["paths"]["/shipping/shipments"]["get"]["parameters"]
        }
        assert listed_params == {"limit", "cursor", "status", "recipient_id"}
