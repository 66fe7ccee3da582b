"""One order followed through sales → shipping → sales: the order placed over HTTP with
a ``traceparent``, shipping's policy requesting its shipment, the shipment dispatched
over HTTP by a client of the same trace, sales' policy marking the order shipped. Every
envelope on the three streams carries the trace (correlation id, ``traceparent``) and
every span the toolkit made for it (requests, saves, the relays' publishing, the
projector's applying, the policies' reactions) is of that one trace, each the child of
the one that caused it. Without OpenTelemetry (``TOOLKIT_TRACING=off``) nothing of it is
imported, and the envelopes carry the trace all the same. The feed and webhooks pass the
envelopes on unchanged, trace included.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import orjson
import pytest
from nats.aio.client import Client
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from contexts.sales import Sales
from contexts.system import system
from projections.shipping.api import dispatches
from projections.shipping.dispatches import Dispatches
from tests.conftest import eventually, serving, wait_for
from tests.flow import place_orders, read_all, relay_all
from tests.integration.test_webhooks import (
    Receiver,
    api,
    dispatching,
    log_env,
    subscribe,
)
from toolkit import tracing
from toolkit.config import Settings
from toolkit.http.app import create_app
from toolkit.nats.connection import connect
from toolkit.nats.embedded import EmbeddedServer
from toolkit.read.projector import Projector
from toolkit.read.store import ReadModelStore
from toolkit.readmodels.sqlite import SQLiteHome
from toolkit.webhooks import new_secret
from toolkit.write.causation import Causation, caused

__all__ = ["api", "log_env"]  # fixtures: the webhooks' API, the sales log on SQLite

pytestmark = pytest.mark.timeout(60)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT = "00f067aa0ba902b7"
"""The client's span: the parent of each request it sends."""
HEADERS = {"traceparent": f"00-{TRACE}-{CLIENT}-01", "tracestate": "shop=web,vendor=1"}


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure(provider)
    try:
        yield exporter
    finally:
        tracing.configure()  # decided from the environment again


async def follow_one_order(url: str, data_dir: Path) -> str:
    """The order's id, once it is shipped and every stream's messages are projected."""
    settings = Settings(nats_url=url, data_dir=data_dir)
    served = replace(system, routers={"dispatches": dispatches})
    app = create_app(served, settings, policies=list(system.policies))
    nc = await connect(url)
    stop = asyncio.Event()
    store = ReadModelStore(SQLiteHome(data_dir, "dispatches").live(), Dispatches())
    projecting = asyncio.create_task(Projector(Dispatches(), store, nc).run(stop))
    try:
        async with serving(app) as base, httpx.AsyncClient(base_url=base) as http:
            customer = await http.post(
                "/sales/customers", json={"name": "Ann", "email": "a@x.org"}, headers=HEADERS
            )
            line = {"sku": "tea", "quantity": 2, "unit_price": "2.50"}
            placed = await http.post(
                "/sales/orders",
                json={"customer_id": customer.json()["id"], "lines": [line]},
                headers=HEADERS,
            )
            order = str(placed.json()["id"])

            async def dispatch() -> httpx.Response | None:  # once shipping's policy ran
                answer = await http.post(
                    f"/shipping/shipments/{order}/dispatch",
                    json={"carrier": "DHL"},
                    headers=HEADERS,
                )
                return None if answer.status_code == 404 else answer

            assert (await eventually(dispatch)).status_code == 200
            sales = Sales(data_dir=data_dir)
            try:
                await wait_for(lambda: sales.get_order(UUID(order)).status == "shipped")
            finally:
                sales.close()
            shipped = await eventually(lambda: _shipped_on_stream(nc))
            read = await http.get(f"/shipping/dispatches/{order}")  # projected
            await wait_for(lambda: store.checkpoint("shipping") >= 2)
            assert read.status_code in (200, 503) and shipped
        return order
    finally:
        stop.set()
        await projecting
        store.close()
        await nc.close()


async def _shipped_on_stream(nc: Any) -> bool | None:
    messages = await read_all(nc, "sales")
    return any(b"sales.OrderShipped" in m.data for m in messages) or None


def envelopes(url: str, names: tuple[str, ...] = ("sales", "shipping", "billing")) -> list[Any]:
    """Every message's envelope on the streams ``names``."""

    async def read() -> list[dict[str, Any]]:
        nc = await connect(url)
        try:
            streams = [await read_all(nc, name) for name in names]
        finally:
            await nc.close()
        return [orjson.loads(m.data) for messages in streams for m in messages]

    return asyncio.run(read())


def test_one_order_is_one_trace_on_every_envelope_and_span(
    nats_server: EmbeddedServer, data_dir: Path, spans: InMemorySpanExporter
) -> None:
    order = asyncio.run(follow_one_order(nats_server.url, data_dir))
    published = envelopes(nats_server.url)

    types = {e["type"] for e in published}
    assert {"sales.OrderPlaced", "shipping.ShipmentRequested"} <= types
    assert {"shipping.ShipmentDispatched", "sales.OrderShipped"} <= types
    for envelope in published:
        assert envelope["correlationid"] == TRACE, envelope["type"]
        assert envelope["traceparent"].split("-")[1] == TRACE, envelope["type"]
        assert envelope["tracestate"] == "shop=web,vendor=1"

    finished: list[ReadableSpan] = list(spans.get_finished_spans())
    assert {f"{s.context.trace_id:032x}" for s in finished} == {TRACE}
    names = {s.name for s in finished}
    assert {
        "POST /sales/orders",
        "sales save",
        "sales publish",
        "ship-orders react",
        "shipping save",
        "shipping publish",
        "dispatches apply",
        "POST /shipping/shipments/{shipment_id}/dispatch",
        "mark-shipped react",
    } <= names, names

    # The order shipped: its envelope's parent span, and that span's ancestors.
    by_id = {f"{s.context.span_id:016x}": s for s in finished}
    (shipped,) = [
        e for e in published if e["type"] == "sales.OrderShipped" and e["data"]["order_id"] == order
    ]
    chain, parent = [], shipped["traceparent"].split("-")[2]
    while parent in by_id:
        span = by_id[parent]
        chain.append(span.name)
        assert span.parent is not None
        parent = f"{span.parent.span_id:016x}"
    assert chain == [
        "sales save",
        "mark-shipped react",
        "shipping save",
        "POST /shipping/shipments/{shipment_id}/dispatch",
    ]
    assert parent == CLIENT  # the dispatching client's span
    assert shipped["causationid"].startswith("shipping:")  # the dispatch's envelope


NO_OTEL = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from contexts.sales import Sales
    from contexts.sales.queued import commands
    from toolkit import tracing
    from toolkit.commands.worker import CommandRunner
    from toolkit.nats.connection import connect
    from toolkit.nats.streams import StreamSpec, ensure_stream
    from toolkit.write.relay import Relay

    url, folder, traceparent = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    sales = Sales(data_dir=folder)
    trace = tracing.incoming(traceparent, None)  # as a worker reads a queued command
    body = b'{"name": "Ann", "email": "a@x.org"}'
    done = CommandRunner(commands, sales).run(
        "5f0c3a1e-8d2b-4c1a-9e3f-2b7d6a4c8e10", "register-customer", body,
        last_try=True, trace=trace,
    )
    assert done.state == "done", done

    async def relay() -> int:
        nc = await connect(url)
        try:
            await ensure_stream(nc.jetstream(), StreamSpec("sales"))
            return (await Relay(sales, nc).run(until_head=True)).published
        finally:
            await nc.close()

    assert asyncio.run(relay()) == 1
    sales.close()
    print(sorted(name for name in sys.modules if name.startswith("opentelemetry")))
    """
)


def test_without_opentelemetry_nothing_of_it_is_imported(
    nats_server: EmbeddedServer, data_dir: Path
) -> None:
    """A queued command's run and a relay pass (the toolkit's own processes: ``toolkit
    commands``, ``relay``, ``react``, ``project``). FastAPI, from 0.16x on, imports
    OpenTelemetry's API itself, so ``toolkit serve`` has it loaded whatever this says."""
    env = {**os.environ, tracing.ENV: "off"}
    done = subprocess.run(
        [sys.executable, "-c", NO_OTEL, nats_server.url, str(data_dir), HEADERS["traceparent"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    (envelope,) = envelopes(nats_server.url, ("sales",))
    assert envelope["correlationid"] == TRACE
    assert envelope["causationid"] == "command:5f0c3a1e-8d2b-4c1a-9e3f-2b7d6a4c8e10"
    assert envelope["traceparent"] == HEADERS["traceparent"]  # no span: the caller's


async def test_the_feed_and_webhooks_pass_the_trace_on_unchanged(
    nc: Client, api: httpx.AsyncClient, sales: Sales, data_dir: Path, nats_server: EmbeddedServer
) -> None:
    trace = tracing.incoming(HEADERS["traceparent"], HEADERS["tracestate"])
    hooks = Receiver()
    async with serving(hooks.app()) as receiver:
        await subscribe(api, f"{receiver}/placed", "sales.OrderPlaced", new_secret())
        with caused(Causation("http:1", TRACE, *trace)):
            place_orders(sales, 1)
        await relay_all(sales, nc)
        (message,) = [m for m in await read_all(nc) if b"sales.OrderPlaced" in m.data]
        async with dispatching(nc, data_dir):
            await wait_for(lambda: len(hooks.accepted) == 1, within=30)
    assert hooks.accepted[0].body == message.data  # the envelope as on the stream
    envelope = orjson.loads(message.data)
    traced = {"correlationid": TRACE, "causationid": "http:1", **HEADERS}
    assert {key: envelope[key] for key in traced} == traced

    settings = Settings(nats_url=nats_server.url, data_dir=data_dir)
    app = create_app(system, settings, relay=False)
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as http:
        page = (await http.get("/feed/sales")).json()
    (fed,) = [e["event"] for e in page["events"] if e["event"]["type"] == "sales.OrderPlaced"]
    assert fed == envelope
