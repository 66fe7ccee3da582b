"""Issue 18, cases 7 to 10: every error at the HTTP boundary is a problem document, never a
500 nor a hang; tokens that can never be met are 400 at once; ``If-None-Match`` is judged
against what exists; readiness waits for every read model the API serves."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
from eventsourcing.application import AggregateNotFoundError
from fastapi import APIRouter

from contexts.system import system
from projections.billing import Accounts
from projections.billing.invoices import Invoices
from projections.shipping import Shipments
from projections.shipping.dispatches import Dispatches
from tests.conftest import create_read_models, free_port, serving
from tests.integration.test_http_boundary import api, place_order
from toolkit.config import Settings
from toolkit.errors import ConflictError, InvalidCommand, UnknownAggregate
from toolkit.http.app import create_app
from toolkit.nats.embedded import EmbeddedServer
from toolkit.system import System

pytestmark = pytest.mark.timeout(60)

PROBLEM = "application/problem+json"


def is_problem(response: httpx.Response, status: int) -> str:
    """The detail of ``response``, a problem document of ``status``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM, response.text
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return str(body["detail"])


def cursor_of(value: object) -> str:
    """A cursor as a client could forge one (orjson refuses integers beyond 64 bits)."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def in_process(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")  # type: ignore[arg-type]


def commands(_: object) -> APIRouter:
    """A user's own command endpoints, with no helper mapping the toolkit's errors."""
    api = APIRouter(prefix="/mine")
    raised = {
        "invalid": InvalidCommand("a cart needs a line"),
        "unknown": UnknownAggregate("no cart 7"),
        "missing": AggregateNotFoundError(uuid4()),
        "conflict": ConflictError("cart 7 was changed meanwhile"),
    }

    @api.post("/{what}")
    def command(what: str) -> None:
        raise raised[what]

    return api


@pytest.fixture
async def offline(data_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The example system's API, its NATS away (nothing listens on the port)."""
    settings = Settings(data_dir=data_dir, nats_url=f"nats://127.0.0.1:{free_port()}")
    async with in_process(create_app(system, settings, relay=False)) as http:
        yield http


@pytest.mark.parametrize("after", [2**63, 2**64, 10**30, -1, -(2**63) - 1])
async def test_a_feed_position_no_stream_can_hold_is_422_at_once(
    offline: httpx.AsyncClient, after: int
) -> None:
    """Before: any integer was taken and asked NATS for the page (a wait, then 503 or 404)."""
    began = time.monotonic()
    detail = is_problem(await offline.get(f"/feed/sales?after={after}"), 422)
    assert "after" in detail and time.monotonic() - began < 1.0


async def test_case_7_every_error_is_a_problem_document(tmp_path: Path, data_dir: Path) -> None:
    """Before: integers beyond 64 bits in a cursor or a subscription's ``after`` were
    500s, as were a user's endpoints raising the toolkit's errors; readiness took 5 s and
    then 500 once NATS was away, /metrics as long; a read with a token the model had
    passed asked NATS (503)."""
    mine = create_app(System(contexts=system.contexts, commands={"sales": commands}), Settings(
        data_dir=data_dir / "mine", nats_url="nats://127.0.0.1:1"), relay=False)  # fmt: skip
    async with in_process(mine) as http:
        for what, status in (("invalid", 422), ("unknown", 404), ("missing", 404)):
            assert is_problem(await http.post(f"/mine/{what}"), status)
        assert "changed meanwhile" in is_problem(await http.post("/mine/conflict"), 409)

    nats_server = EmbeddedServer(tmp_path / "nats", port=free_port()).start()
    try:
        await _problems_and_nats_away(nats_server, data_dir)
    finally:
        nats_server.stop()


async def _problems_and_nats_away(nats_server: EmbeddedServer, data_dir: Path) -> None:
    async with api(nats_server, data_dir) as a:
        _, order, token = await place_order(a.http)
        assert (
            await a.http.get("/shipping/shipments", headers={"Consistency-Token": token})
        ).is_success
        for number in (2**63, 2**64 - 1):  # past SQLite's integers (larger ones are floats)
            cursor = cursor_of(["2026-01-01", number])
            detail = is_problem(
                await a.http.get("/shipping/shipments", params={"cursor": cursor}), 400
            )
            assert "is not one this API gave" in detail
        new = {"url": "https://example.com/h", "event_type": "sales.OrderPlaced",
               "secret": "whsec_" + "A" * 32, "after": 2**64}  # fmt: skip
        assert "after" in is_problem(
            await a.http.post("/webhooks/sales/subscriptions", json=new), 422
        )
        retry = f"/webhooks/sales/dead-letters/{2**64}/{-(2**63) - 1}/retry"
        assert is_problem(await a.http.post(retry), 404)

        nats_server.stop()
        started = time.monotonic()
        ready = await a.http.get("/health/ready")
        assert time.monotonic() - started < 1.5
        assert ready.status_code == 503 and ready.json()["reasons"], ready.text
        started = time.monotonic()
        assert (await a.http.get("/metrics")).status_code == 200
        assert time.monotonic() - started < 1.5
        # The model has passed the token's position: it answers, without NATS.
        read = await a.http.get(
            f"/shipping/shipments/{order}", headers={"Consistency-Token": token}
        )
        assert read.status_code == 200, read.text
        await nats_server.start_async()  # on the same port: the clients close cleanly


async def test_case_7_read_models_on_a_postgresql_that_is_down_are_503(data_dir: Path) -> None:
    """Before: the psycopg error of the read-model connection was a 500."""
    settings = Settings(
        data_dir=data_dir,
        nats_url="nats://127.0.0.1:1",
        read_model_url=f"postgresql://toolkit@127.0.0.1:{free_port()}/nowhere",
    )
    async with in_process(create_app(system, settings, relay=False)) as http:
        answer = await http.get("/shipping/shipments")
        assert "unavailable" in is_problem(answer, 503)
        assert answer.headers["retry-after"]


async def test_case_8_tokens_that_can_never_be_met_are_400_at_once(
    nats_server: EmbeddedServer, data_dir: Path
) -> None:
    """Before: each waited the full TOOLKIT_CONSISTENCY_WAIT, then 503 with Retry-After."""
    async with api(nats_server, data_dir, consistency_wait=5.0) as a:
        _, order, token = await place_order(a.http)
        item = f"/shipping/shipments/{order}"
        assert (await a.http.get(item, headers={"Consistency-Token": token})).status_code == 200
        head = int(token.partition(":")[2])
        for never, says in (
            ("nowhere:1", "shipping does not read context nowhere"),
            ("billing:1", "billing is a projection, not a context"),
            (f"sales:{head + 1000}", f"past the head of sales's log ({head})"),
        ):
            started = time.monotonic()
            detail = is_problem(await a.http.get(item, headers={"Consistency-Token": never}), 400)
            assert says in detail and time.monotonic() - started < 1.0


async def test_case_9_if_none_match_is_judged_against_what_exists(
    nats_server: EmbeddedServer, data_dir: Path
) -> None:
    """Before: ``*`` or the list's ETag on an id that does not exist answered 304."""
    async with api(nats_server, data_dir) as a:
        _, order, token = await place_order(a.http)
        listed = await a.http.get("/shipping/shipments", headers={"Consistency-Token": token})
        tag = listed.headers["etag"]
        missing = f"/shipping/shipments/{uuid4()}"
        for asked in ("*", tag, f'"other", {tag}'):
            assert "no shipment" in is_problem(
                await a.http.get(missing, headers={"If-None-Match": asked}), 404
            )
        for asked in ("*", tag):  # what exists still revalidates
            found = await a.http.get(
                f"/shipping/shipments/{order}", headers={"If-None-Match": asked}
            )
            assert (
                found.status_code == 304 and found.content == b"" and found.headers["etag"] == tag
            )


async def test_case_10_readiness_waits_for_every_read_model_served(
    nats_server: EmbeddedServer, data_dir: Path
) -> None:
    """Before: /health/ready was 200 while reads of a projection without a read model
    answered 503."""
    settings = Settings(nats_url=nats_server.url, data_dir=data_dir)
    async with (
        serving(create_app(system, settings)) as base,
        httpx.AsyncClient(base_url=base) as http,
    ):
        ready = await http.get("/health/ready")
        assert ready.status_code == 503, ready.text
        reasons = " ".join(ready.json()["reasons"])
        assert "projection shipping has no read model yet" in reasons
        assert "projection billing has no read model yet" in reasons
        create_read_models(data_dir, Shipments, Dispatches, Invoices)
        ready = await http.get("/health/ready")
        assert ready.json()["reasons"] == ["projection billing has no read model yet"]
        create_read_models(data_dir, Accounts)
        assert (await http.get("/health/ready")).status_code == 200
