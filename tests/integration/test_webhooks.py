"""Webhooks against real receivers (small ASGI apps in uvicorn on free ports): every event
reaches a receiver that fails three times then recovers exactly once, signed; nothing is
sent again after a restart, even when the dispatcher's queue starts over; what keeps
failing is parked with the reason and can be retried; bad registrations get problem
details; secrets are never logged nor shown."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import os
import signal
import socket
import sqlite3
import stat
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from nats.aio.client import Client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from contexts.sales import Sales
from contexts.system import system
from tests.conftest import serving, wait_for
from tests.flow import place_orders, public_positions, read_all, relay_all
from toolkit import Relay
from toolkit.config import Settings
from toolkit.errors import ConfigurationError
from toolkit.http import problems
from toolkit.http.app import create_app
from toolkit.http.feed import NatsLink
from toolkit.nats.embedded import EmbeddedServer
from toolkit.nats.streams import StreamSpec, ensure_stream
from toolkit.webhooks import Dispatcher, WebhookStore, new_secret, router, sign, verify


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Receiver:
    """A webhook receiver that answers ``status`` to its first ``failures`` requests.
    With a ``gate``, each request is recorded when it arrives and answered once the gate
    is open (``held`` of them wait meanwhile)."""

    failures: int = 0
    status: int = 500
    calls: list[Call] = field(default_factory=list)
    gate: asyncio.Event | None = None
    held: int = 0

    @property
    def accepted(self) -> list[Call]:
        return [c for c in self.calls if c.status < 300]

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            failing = len(self.calls) < self.failures
            status = self.status if failing else 204
            body = await request.body()
            self.calls.append(Call(request.url.path, dict(request.headers), body, status))
            if self.gate is not None:
                self.held += 1
                try:
                    await self.gate.wait()
                finally:
                    self.held -= 1
            return Response(b"down for maintenance" if failing else None, status_code=status)

        return Starlette(routes=[Route("/{name}", hook, methods=["POST"])])


def signature(secret: str, call: Call) -> str:
    """The Standard Webhooks signature, computed here independently of toolkit.webhooks."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{call.headers['webhook-id']}.{call.headers['webhook-timestamp']}.".encode()
    digest = hmac.new(key, signed + call.body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


ALLOW = ("127.0.0.1/32", "example.com")
"""What these tests open to webhooks (``TOOLKIT_WEBHOOK_ALLOW``): their receivers listen
on loopback, and example.com, the registrations' host, is allowed by name so that
registering it resolves nothing (no outside network)."""


def webhooks_app(data_dir: Path, nats_url: str) -> FastAPI:
    app = FastAPI()
    problems.install(app)
    link = NatsLink(Settings(nats_url=nats_url, data_dir=data_dir, webhook_allow=ALLOW))
    app.include_router(router(system.contexts, data_dir, link))
    return app


@pytest.fixture
async def api(nats_server: EmbeddedServer, data_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        serving(webhooks_app(data_dir, nats_server.url)) as base,
        httpx.AsyncClient(base_url=base) as http,
    ):
        yield http


@pytest.fixture
def log_env() -> dict[str, str]:
    return {}  # the sales fixture on a SQLite log: the log's kind is not the subject here


@contextlib.asynccontextmanager
async def dispatching(nc: Client, data_dir: Path, **options: Any) -> AsyncIterator[Dispatcher]:
    """A dispatcher with quick retries, running until the block ends."""
    defaults: dict[str, Any] = {"backoff": 0.02, "max_backoff": 0.1, "poll": 0.05, "allowed": ALLOW}
    options = defaults | options
    dispatcher = Dispatcher(nc, "sales", data_dir, **options)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    try:
        yield dispatcher
    finally:
        stop.set()
        await task


async def subscribe(api: httpx.AsyncClient, url: str, event_type: str, secret: str) -> str:
    created = await api.post(
        "/webhooks/sales/subscriptions",
        json={"url": url, "event_type": event_type, "secret": secret},
    )
    assert created.status_code == 201, created.text
    subscription_id: str = created.json()["id"]
    return subscription_id


async def events_of(nc: Client, *types: str) -> dict[str, bytes]:
    """Event id -> body of the stream's events of these types."""
    bodies = {}
    for message in await read_all(nc):
        event = orjson.loads(message.data)
        if event["type"] in types:
            bodies[event["id"]] = message.data
    return bodies


async def test_a_receiver_that_fails_three_times_then_recovers_gets_every_event_once(
    nc: Client, api: httpx.AsyncClient, sales: Sales, data_dir: Path
) -> None:
    hooks = Receiver(failures=3)
    secrets = {"/placed": new_secret(), "/cancelled": new_secret()}
    async with serving(hooks.app()) as receiver:
        await subscribe(api, f"{receiver}/placed", "sales.OrderPlaced", secrets["/placed"])
        await subscribe(api, f"{receiver}/cancelled", "sales.OrderCancelled", secrets["/cancelled"])
        place_orders(sales, 30, cancel_every=6)  # 1 customer, 30 orders, 5 cancellations
        await relay_all(sales, nc)
        wanted = await events_of(nc, "sales.OrderPlaced", "sales.OrderCancelled")
        assert len(wanted) == 35

        async with dispatching(nc, data_dir) as dispatcher:
            await wait_for(lambda: len(hooks.accepted) == 35, within=30)
        assert [c.status for c in hooks.calls[:3]] == [500, 500, 500]
        assert (dispatcher.stats.delivered, dispatcher.stats.retried) == (35, 3)
        assert dispatcher.stats.parked == 0

        # A restart sends nothing again, even when the dispatcher's queue starts over
        # from the beginning of the stream: the delivery records say what was done.
        await nc.jetstream().delete_consumer("sales", "webhooks")
        place_orders(sales, 5, cancel_every=6)  # 1 customer, 5 orders, 1 cancellation
        await relay_all(sales, nc)
        wanted = await events_of(nc, "sales.OrderPlaced", "sales.OrderCancelled")
        assert len(wanted) == 41
        async with dispatching(nc, data_dir) as again:
            await wait_for(lambda: again.stats.read == 43, within=30)  # the whole stream
            await wait_for(lambda: len(hooks.accepted) == 41, within=30)
        assert again.stats.fanned_out == again.stats.delivered == 6

    received = Counter(c.headers["webhook-id"] for c in hooks.accepted)
    assert received == Counter(list(wanted))  # every event, exactly once
    for call in hooks.calls:
        event = orjson.loads(call.body)
        assert call.body == wanted[event["id"]]  # the envelope as on the stream
        assert call.headers["webhook-id"] == event["id"]
        assert call.path == {"sales.OrderPlaced": "/placed"}.get(event["type"], "/cancelled")
        secret = secrets[call.path]
        assert call.headers["webhook-signature"] == signature(secret, call)
        assert verify(secret, call.headers, call.body)
        assert abs(int(call.headers["webhook-timestamp"]) - time.time()) < 60
        assert call.headers["content-type"] == "application/cloudevents+json"
    failed = {c.headers["webhook-id"] for c in hooks.calls[:3]}
    assert failed <= set(received)  # the failed ones were retried and delivered
    with WebhookStore.of(data_dir, "sales") as store:
        assert store.counts() == {"pending": 0, "delivered": 41, "parked": 0}


async def test_a_subscriber_that_keeps_failing_is_parked_with_the_reason(
    nc: Client,
    api: httpx.AsyncClient,
    sales: Sales,
    data_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    broken, fine = Receiver(failures=10**9, status=503), Receiver()
    secret = new_secret()
    async with serving(broken.app()) as down, serving(fine.app()) as up:
        broken_id = await subscribe(api, f"{down}/hook", "sales.OrderPlaced", secret)
        await subscribe(api, f"{up}/hook", "sales.OrderPlaced", new_secret())
        gone_id = await subscribe(api, f"{nowhere()}/hook", "sales.OrderPlaced", new_secret())
        place_orders(sales, 1, cancel_every=6)
        await relay_all(sales, nc)
        (event_id,) = await events_of(nc, "sales.OrderPlaced")
        position = 2  # after the customer's registration

        async with dispatching(nc, data_dir, max_attempts=3) as dispatcher:
            await wait_for(lambda: dispatcher.stats.parked == 2, within=30)
            assert [c.headers["webhook-id"] for c in broken.calls] == [event_id] * 3
            assert len(fine.accepted) == 1  # failing subscribers hold up nobody else
            listed = (await api.get("/webhooks/sales/dead-letters")).json()
            letters = {letter["subscription_id"]: letter for letter in listed}
            assert letters[broken_id] == (
                {
                    "subscription_id": broken_id,
                    "url": f"{down}/hook",
                    "event_id": event_id,
                    "event_type": "sales.OrderPlaced",
                    "position": position,
                    "attempts": 3,
                    "reason": "gave up after 3 attempts: HTTP 503",  # not the receiver's body
                    "parked_at": letters[broken_id]["parked_at"],
                }
            )
            refused = "gave up after 3 attempts: ConnectError: All connection attempts failed"
            assert letters[gone_id]["reason"] == refused

            # Once the receiver is mended, the dead letter is retried on request.
            broken.failures = 0
            retried = await api.post(f"/webhooks/sales/dead-letters/{broken_id}/{event_id}/retry")
            assert retried.status_code == 202
            await wait_for(lambda: len(broken.accepted) == 1, within=30)
        left = (await api.get("/webhooks/sales/dead-letters")).json()
        assert [letter["subscription_id"] for letter in left] == [gone_id]
        again = await api.post(f"/webhooks/sales/dead-letters/{broken_id}/{event_id}/retry")
        assert again.status_code == 404

    assert f"parked {event_id}" in caplog.text and "HTTP 503" in caplog.text
    key = base64.b64decode(secret.removeprefix("whsec_"))
    for text in (secret, secret.removeprefix("whsec_"), key.hex()):
        assert text not in caplog.text  # secrets are never logged


def nowhere(scheme: str = "http") -> str:
    """A loopback address nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"{scheme}://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
async def api_without_nats(data_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    """Registration checks its input before it needs NATS."""
    async with (
        serving(webhooks_app(data_dir, nowhere("nats"))) as base,
        httpx.AsyncClient(base_url=base) as http,
    ):
        yield http


SECRET = new_secret()
GOOD = {"url": "https://example.com/hooks", "event_type": "sales.OrderPlaced", "secret": SECRET}


@pytest.mark.parametrize(
    ("path", "body", "status", "detail"),
    [
        ("sales", GOOD | {"url": "ftp://example.com/x"}, 422, "body.url: Value error, the "
         "callback URL must be http:// or https:// with a host"),
        ("sales", GOOD | {"url": "example.com/hooks"}, 422, "body.url"),
        ("sales", GOOD | {"url": "javascript:alert(1)"}, 422, "body.url"),
        ("sales", GOOD | {"url": "http:///no-host"}, 422, "body.url"),
        ("sales", GOOD | {"event_type": "sales.OrderLost"}, 422, "unknown event type "
         "'sales.OrderLost' for sales (known: sales.CustomerRegistered, "
         "sales.OrderCancelled, sales.OrderPlaced, sales.OrderShipped, sales.ProductListed, "
         "sales.ProductRepriced)"),
        ("sales", {"url": GOOD["url"], "event_type": "sales.OrderPlaced"}, 422, "body.secret: "
         "Field required"),
        ("sales", GOOD | {"secret": "hunter2"}, 422, "body.secret: Value error, the secret "
         "must be 'whsec_' and base64"),
        ("sales", GOOD | {"secret": "whsec_" + base64.b64encode(b"short").decode()}, 422,
         "24 to 64 bytes once decoded, not 5"),
        ("sales", {k: v for k, v in GOOD.items() if k != "event_type"}, 422,
         "body.event_type: Field required"),
        ("sales", GOOD | {"after": -1}, 422, "body.after"),
        ("sales", GOOD | {"callback": "https://example.com"}, 422, "body.callback: Extra inputs"),
        ("sales", b'{"url": "https://example.com", ', 422, "JSON decode error"),
        ("orders", GOOD, 404, "no context 'orders' (known: billing, sales, shipping)"),
    ],
)  # fmt: skip
async def test_bad_registrations_get_problem_details(
    api_without_nats: httpx.AsyncClient,
    path: str,
    body: dict[str, Any] | bytes,
    status: int,
    detail: str,
) -> None:
    url = f"/webhooks/{path}/subscriptions"
    if isinstance(body, bytes):
        headers = {"content-type": "application/json"}
        answer = await api_without_nats.post(url, content=body, headers=headers)
    else:
        answer = await api_without_nats.post(url, json=body)
    assert answer.status_code == status == answer.json()["status"], answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert detail in answer.json()["detail"]
    secret = body.get("secret", "") if isinstance(body, dict) else ""
    assert not secret or secret not in answer.text  # a secret is never echoed
    assert (await api_without_nats.get("/webhooks/sales/subscriptions")).json() == []


async def test_the_api_opens_a_store_once_and_keeps_sqlite_off_the_event_loop(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API opened a store (and checked its schema) per request, on the event loop."""
    opened: list[str] = []
    closed: list[str] = []
    threads: set[int] = set()
    real_open, real_close = WebhookStore.__init__, WebhookStore.close
    real_subscriptions = WebhookStore.subscriptions

    def open_store(store: WebhookStore, path: Path, context: str, keys: Any = None) -> None:
        opened.append(context)
        real_open(store, path, context, keys)

    def close(store: WebhookStore) -> None:
        closed.append(store.context)
        real_close(store)

    def subscriptions(store: WebhookStore, subscription_id: str | None = None) -> list[Any]:
        threads.add(threading.get_ident())
        return real_subscriptions(store, subscription_id)

    monkeypatch.setattr(WebhookStore, "__init__", open_store)
    monkeypatch.setattr(WebhookStore, "close", close)
    monkeypatch.setattr(WebhookStore, "subscriptions", subscriptions)
    async with (
        serving(webhooks_app(data_dir, nowhere("nats"))) as base,
        httpx.AsyncClient(base_url=base) as api,
    ):
        url = "/webhooks/sales/subscriptions"
        created = await api.post(url, json=GOOD | {"after": 0})  # no NATS asked
        assert created.status_code == 201, created.text
        listed = await asyncio.gather(*(api.get(url) for _ in range(10)))
        assert {len(answer.json()) for answer in listed} == {1}
        assert (await api.get(created.headers["location"])).status_code == 200
        assert (opened, closed) == (["sales"], [])
    assert threads and threading.get_ident() not in threads  # not the event loop's thread
    assert closed == ["sales"]  # with the app


async def test_subscriptions_are_registered_listed_and_removed(
    nc: Client, api: httpx.AsyncClient, sales: Sales, data_dir: Path
) -> None:
    place_orders(sales, 2, cancel_every=6)
    head = await relay_all(sales, nc)
    created = await api.post("/webhooks/sales/subscriptions", json=GOOD)
    assert created.status_code == 201
    subscription = created.json()
    assert subscription == {
        "id": subscription["id"],
        "context": "sales",
        "event_type": "sales.OrderPlaced",
        "url": "https://example.com/hooks",
        "after": head,  # events from now on
        "created_at": subscription["created_at"],
    }
    assert created.headers["location"] == f"/webhooks/sales/subscriptions/{subscription['id']}"
    cancelled = await api.post(
        "/webhooks/sales/subscriptions", json=GOOD | {"event_type": "sales.OrderCancelled"}
    )
    assert cancelled.status_code == 201 and cancelled.json()["after"] == head
    from_start = GOOD | {"url": "https://example.com/all", "after": 0}
    history = await api.post("/webhooks/sales/subscriptions", json=from_start)
    assert history.status_code == 201 and history.json()["after"] == 0

    twice = await api.post("/webhooks/sales/subscriptions", json=GOOD)
    assert twice.status_code == 409 and subscription["id"] in twice.json()["detail"]
    listed = await api.get("/webhooks/sales/subscriptions")
    ids = [subscription["id"], cancelled.json()["id"], history.json()["id"]]
    assert [s["id"] for s in listed.json()] == ids  # oldest first
    assert SECRET not in listed.text and SECRET not in created.text
    assert (await api.get(created.headers["location"])).json() == subscription

    assert (await api.delete(created.headers["location"])).status_code == 204
    gone = await api.get(created.headers["location"])
    assert gone.status_code == 404 and gone.headers["content-type"] == "application/problem+json"
    assert (await api.delete(created.headers["location"])).status_code == 404
    store = data_dir / "webhooks" / "sales.sqlite"
    assert stat.S_IMODE(store.stat().st_mode) == 0o600  # it holds the secrets


def test_signatures_follow_standard_webhooks() -> None:
    # The test vector of the Standard Webhooks reference libraries.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    signed = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert signed == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": f"v1,bm90IHRoaXMgb25l {signed}",  # several: any one will do
    }
    assert verify(secret, headers, body, now=1614265330 + 10)
    assert not verify(secret, headers, body + b" ", now=1614265330)  # tampered body
    assert not verify(new_secret(), headers, body, now=1614265330)  # another secret
    assert not verify(secret, headers, body, now=1614265330 + 301)  # too old: a replay
    assert not verify(secret, {k: v for k, v in headers.items() if k != "webhook-id"}, body)


@pytest.mark.timeout(90)
async def test_two_dispatchers_run_side_by_side_on_one_data_folder(
    nats_server: EmbeddedServer, nc: Client, sales: Sales, data_dir: Path
) -> None:
    """Several dispatchers of a context share its store and its queue: both take work
    (each holds a delivery at the receiver at once), each event is delivered once."""
    hooks = Receiver(gate=asyncio.Event())
    async with serving(hooks.app()) as receiver:
        with WebhookStore.of(data_dir, "sales") as store:
            store.subscribe("sales.OrderPlaced", f"{receiver}/placed", new_secret(), after=0)
            store.subscribe("sales.OrderPlaced", f"{receiver}/also", new_secret(), after=0)
        place_orders(sales, 12, cancel_every=6)
        await relay_all(sales, nc)
        command = [
            sys.executable, "-m", "toolkit", "--nats-url", nats_server.url,
            "--data-dir", str(data_dir), "webhooks", "sales",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
        env["TOOLKIT_WEBHOOK_ALLOW"] = ",".join(ALLOW)
        pipe = asyncio.subprocess.PIPE
        dispatchers = [
            await asyncio.create_subprocess_exec(*command, stderr=pipe, env=env) for _ in range(2)
        ]
        try:
            # 24 deliveries, at most 16 at once per dispatcher: both hold some
            await wait_for(lambda: hooks.held == 24, within=60)
            assert all(d.returncode is None for d in dispatchers)
            hooks.gate.set()  # type: ignore[union-attr]
            with WebhookStore.of(data_dir, "sales") as store:
                await wait_for(lambda: store.counts()["delivered"] == 24, within=30)
        finally:
            for dispatcher in dispatchers:
                if dispatcher.returncode is None:
                    dispatcher.send_signal(signal.SIGTERM)
            ended = [await asyncio.wait_for(d.communicate(), 60) for d in dispatchers]
    summaries = []
    for dispatcher, (_, stderr) in zip(dispatchers, ended, strict=True):
        assert dispatcher.returncode == 0, stderr
        (summary,) = [line for line in stderr.decode().splitlines() if " delivered, " in line]
        summaries.append(int(summary.split()[2]))
    assert sum(summaries) == 24 and min(summaries) > 0, summaries
    received = Counter((c.path, c.headers["webhook-id"]) for c in hooks.calls)
    assert len(received) == 24 and set(received.values()) == {1}  # each once
    with WebhookStore.of(data_dir, "sales") as store:
        assert store.counts() == {"pending": 0, "delivered": 24, "parked": 0}


def test_the_example_systems_api_documents_webhooks_and_the_feed(data_dir: Path) -> None:
    schema = create_app(system, Settings(data_dir=data_dir), relay=False).openapi()
    assert {
        "/feed/{context}",
        "/webhooks/{context}/subscriptions",
        "/webhooks/{context}/subscriptions/{subscription_id}",
        "/webhooks/{context}/dead-letters",
        "/webhooks/{context}/dead-letters/{subscription_id}/{event_id}/retry",
    } <= set(schema["paths"])
    new = schema["components"]["schemas"]["NewSubscription"]
    assert set(new["required"]) == {"url", "event_type", "secret"}
    assert new["properties"]["secret"]["writeOnly"] is True  # never in a response
    assert {"FeedPage", "Subscription", "DeadLetter"} <= set(schema["components"]["schemas"])


EVENT_TYPES = ("sales.CustomerRegistered", "sales.OrderPlaced", "sales.OrderCancelled")


async def test_a_resequenced_stream_delivers_every_event_once_under_its_id(
    nc: Client, api: httpx.AsyncClient, sales: Sales, data_dir: Path
) -> None:
    """After the stream lost its tail, the relay publishes those events again at new
    sequences; later the stream is created again and refilled from sequence 1, so the
    sequences of the republished events hold other events. Keyed by stream sequence, the
    first sent the republished events twice and the second took new events for done."""
    hooks = Receiver()
    js = nc.jetstream()
    store = WebhookStore.of(data_dir, "sales")

    async def deliver(reads: int) -> None:
        """Run a dispatcher until it read ``reads`` messages and nothing waits."""
        async with dispatching(nc, data_dir) as dispatcher:
            await wait_for(
                lambda: dispatcher.stats.read == reads and store.counts()["pending"] == 0,
                within=30,
            )

    try:
        async with serving(hooks.app()) as receiver:
            for event_type in EVENT_TYPES:
                await subscribe(api, f"{receiver}/hook", event_type, new_secret())
            place_orders(sales, 20, cancel_every=6)
            head = await relay_all(sales, nc)
            await deliver(head)
            assert len(hooks.accepted) == head == 25

            for sequence in range(head - 9, head + 1):  # the stream loses its last ten
                await js.delete_msg("sales", sequence)
            place_orders(sales, 3, cancel_every=6)
            relayed = await Relay(sales, nc).run(until_head=True)
            assert relayed.republished_from == public_positions(sales)[head - 11]  # the last kept
            await deliver(relayed.stream_sequence - head)  # its queue goes on after `head`

            await js.delete_stream("sales")
            await ensure_stream(js, StreamSpec("sales"))
            place_orders(sales, 3, cancel_every=6)
            last = await relay_all(sales, nc)
            await deliver(last)  # a new queue, from sequence 1
    finally:
        store.close()

    wanted = [f"sales:{position}" for position in public_positions(sales)]
    assert len(wanted) == last == 35
    received = Counter(c.headers["webhook-id"] for c in hooks.accepted)
    sent_twice = [event_id for event_id, times in received.items() if times > 1]
    never_sent = [event_id for event_id in wanted if event_id not in received]
    assert (sent_twice, never_sent) == ([], [])
    assert received == Counter(wanted)  # each event once, under its own id, nothing else
    bodies = {orjson.loads(m.data)["id"]: m.data for m in await read_all(nc)}
    assert all(call.body == bodies[call.headers["webhook-id"]] for call in hooks.calls)


async def test_messages_the_relay_did_not_publish_are_not_delivered_nor_hide_events(
    nc: Client, sales: Sales, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another client's message carrying the id of an event still to come: delivered, it
    would reach subscribers as that event, and the real one would pass for done."""
    hooks = Receiver()
    async with serving(hooks.app()) as receiver:
        with WebhookStore.of(data_dir, "sales") as store:
            store.subscribe("sales.OrderPlaced", f"{receiver}/hook", new_secret(), after=0)
        place_orders(sales, 1, cancel_every=6)
        await relay_all(sales, nc)
        (real,) = [m.data for m in await read_all(nc) if b'"sales.OrderPlaced"' in m.data]
        next_id = "sales:5"  # log: a customer, an order, its cancellation; then a customer
        forged = orjson.dumps(orjson.loads(real) | {"id": next_id, "data": {"forged": True}})
        await nc.jetstream().publish(
            "sales.Order.mallory.Placed", forged, headers={"Nats-Msg-Id": "mallory-1"}
        )
        place_orders(sales, 1, cancel_every=6)
        await relay_all(sales, nc)
        async with dispatching(nc, data_dir) as dispatcher:
            await wait_for(lambda: len(hooks.accepted) == 2 and dispatcher.stats.read == 7)
        assert dispatcher.stats.untrusted == 1
    relayed = {m.headers["Nats-Msg-Id"]: m.data for m in await read_all(nc)}
    assert {c.headers["webhook-id"]: c.body for c in hooks.calls} == {
        "sales:2": relayed["sales:2"],
        next_id: relayed[next_id],  # the real event, not the forged one before it
    }
    assert "sequence 4 was not published by the sales relay" in caplog.text


OLD_STORE = """
CREATE TABLE subscription (
    id TEXT PRIMARY KEY, event_type TEXT NOT NULL, url TEXT NOT NULL, secret TEXT NOT NULL,
    after INTEGER NOT NULL, created_at TEXT NOT NULL, UNIQUE (event_type, url)
);
CREATE TABLE event (position INTEGER PRIMARY KEY, id TEXT NOT NULL, type TEXT NOT NULL,
    body BLOB NOT NULL);
CREATE TABLE delivery (
    subscription_id TEXT NOT NULL, position INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'parked')),
    attempts INTEGER NOT NULL DEFAULT 0, due REAL NOT NULL, reason TEXT,
    updated_at TEXT NOT NULL, PRIMARY KEY (subscription_id, position)
);
CREATE INDEX delivery_due ON delivery (due) WHERE state = 'pending';
CREATE INDEX delivery_position ON delivery (position);
INSERT INTO subscription VALUES
    ('a', 'sales.OrderPlaced', 'https://a.example/hook', 'whsec_a', 0, '2025-01-01T00:00:00Z'),
    ('b', 'sales.OrderPlaced', 'https://b.example/hook', 'whsec_b', 0, '2025-01-01T00:00:00Z');
INSERT INTO event VALUES
    (5, 'sales:5', 'sales.OrderPlaced', x'7b7d'),
    (7, 'sales:7', 'sales.OrderPlaced', x'7b7d'),
    (12, 'sales:5', 'sales.OrderPlaced', x'7b7d');
INSERT INTO delivery VALUES
    ('a', 3, 'delivered', 1, 0, NULL, '2025-01-01T00:00:00Z'),
    ('a', 5, 'pending', 2, 0, 'HTTP 500', '2025-01-01T00:00:00Z'),
    ('b', 5, 'delivered', 1, 0, NULL, '2025-01-01T00:00:00Z'),
    ('a', 7, 'parked', 8, 0, 'gave up', '2025-01-01T00:00:00Z'),
    ('b', 12, 'pending', 0, 0, NULL, '2025-01-01T00:00:00Z');
"""
"""A store as the toolkit wrote it before deliveries were keyed by event id: subscription
b got sales:5 at sequence 5 and waits for it again at sequence 12 (the stream was
re-sequenced); a's done delivery at sequence 3 has no event body left."""


def test_a_store_keyed_by_stream_sequence_is_converted_once(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = data_dir / "webhooks" / "sales.sqlite"
    path.parent.mkdir(parents=True)
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(OLD_STORE)
    with WebhookStore(path, "sales") as store:
        assert store.counts() == {"pending": 1, "delivered": 1, "parked": 1}
        (due,) = store.claim_due(10, lease=60)
        assert (due.subscription_id, due.event_id, due.attempts) == ("a", "sales:5", 2)
        (letter,) = store.dead_letters()
        assert (letter.subscription_id, letter.event_id, letter.position) == ("a", "sales:7", 7)
        assert store.fan_out("sales:5", 40, "sales.OrderPlaced", b"{}") == 0  # b has it
    assert "3 kept; 1 done ones whose event id is no longer known forgotten" in caplog.text
    caplog.clear()
    with WebhookStore(path, "sales") as store:  # converted once
        assert store.counts() == {"pending": 1, "delivered": 1, "parked": 1}
    assert "converted" not in caplog.text

    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA user_version = 3")
    with pytest.raises(ConfigurationError, match="schema 3, written by a newer toolkit"):
        WebhookStore(path, "sales")
