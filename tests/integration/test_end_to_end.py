"""Commands in, HTTP out: sales -> relay -> JetStream -> projections -> read endpoints
(over both logs and both read-model backends)."""

from __future__ import annotations

import httpx
from nats.aio.client import Client

from contexts.sales import Sales
from contexts.system import system
from projections.billing import Accounts
from projections.shipping import Shipments
from tests.conftest import BACKENDS, serving
from tests.flow import project_all, relay_all
from toolkit.config import Settings
from toolkit.http.app import create_app


@BACKENDS
async def test_commands_reach_the_read_endpoints_through_a_real_server(
    sales: Sales, nc: Client, read_models: Settings
) -> None:
    ann = sales.register_customer("Ann", "ann@example.com")
    kept = sales.place_order(ann, [{"sku": "tea", "quantity": 12, "unit_price": "2.50"}])
    dropped = sales.place_order(ann, [{"sku": "mug", "quantity": 1, "unit_price": "9.99"}])
    sales.cancel_order(dropped, "found a cheaper mug")

    app = create_app(system, read_models, relay=False)
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as http:
        # Before the projections have run there is no read model: 503, not an empty answer.
        early = await http.get(f"/shipping/shipments/{kept}")
        assert early.status_code == 503 and early.headers["retry-after"] == "1"
        assert early.json()["detail"] == "projection shipping has no read model yet"

        await relay_all(sales, nc)
        await project_all(Shipments(), read_models, nc)
        await project_all(Accounts(), read_models, nc)

        shipment = await http.get(f"/shipping/shipments/{kept}")
        assert shipment.status_code == 200
        assert shipment.json() == {
            "shipment_id": str(kept),
            "recipient_id": str(ann),
            "status": "awaiting_dispatch",
            "parcels": 2,
            "items": 12,
            "since": shipment.json()["since"],
            "called_off_because": None,
        }
        called_off = await http.get("/shipping/shipments", params={"status": "called_off"})
        assert [s["shipment_id"] for s in called_off.json()["items"]] == [str(dropped)]
        assert called_off.json()["items"][0]["called_off_because"] == "found a cheaper mug"

        account = await http.get(f"/billing/accounts/{ann}")
        assert account.json() == {
            "account_id": str(ann),
            "holder": "Ann",
            "owed_cents": 3000,
            "open_charges": 1,
        }

        missing = await http.get(f"/billing/accounts/{dropped}")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        assert missing.json() == {
            "type": "about:blank",
            "title": "Not Found",
            "status": 404,
            "detail": f"no account {dropped}",
        }
        malformed = await http.get("/shipping/shipments/not-an-id")
        assert malformed.status_code == 422
        assert malformed.headers["content-type"] == "application/problem+json"
        assert malformed.json()["detail"].startswith("path.shipment_id: ")
        too_many = await http.get("/shipping/shipments", params={"limit": 100000})
        assert too_many.status_code == 422 and "query.limit" in too_many.json()["detail"]
        unknown_status = await http.get("/shipping/shipments", params={"status": "lost"})
        assert unknown_status.status_code == 422 and "query.status" in unknown_status.text
        nowhere = await http.get("/no/such/path")
        assert nowhere.status_code == 404 and nowhere.json()["title"] == "Not Found"
