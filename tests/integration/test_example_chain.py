"""The example's three contexts reacting to each other over a real nats-server: sales
places orders; shipping's policy requests a shipment and billing's issues an invoice for
each; shipments dispatched and invoices paid by commands; sales' policy marks the
dispatched orders shipped. Relays and reactors run in-process, on SQLite logs, as
``toolkit relay`` and ``toolkit react`` run them; a replay of the read models, and the
policies run again afterwards, change no log; over HTTP, as ``toolkit serve --policies
all`` runs them, each command's consistency token reads its effect back."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import orjson
import pytest
from eventsourcing.persistence import ProcessRecorder

from contexts.billing import Billing
from contexts.sales import Sales
from contexts.shipping import Shipping
from contexts.system import system
from projections.billing.api import invoices
from projections.billing.invoices import Invoices
from projections.shipping.api import dispatches
from projections.shipping.dispatches import Dispatches
from tests.conftest import eventually, serving, wait_for
from tests.flow import TEAS, read_all
from toolkit.cli import main
from toolkit.cli.demo import Settled
from toolkit.config import Settings
from toolkit.http.app import create_app
from toolkit.nats.connection import connect
from toolkit.nats.embedded import EmbeddedServer
from toolkit.nats.streams import ensure_stream
from toolkit.react.deadletters import PolicyDeadLetters, dead_letters_path
from toolkit.react.reactor import Reactor
from toolkit.react.runner import PolicyRunner
from toolkit.read.projector import Projector
from toolkit.read.store import ReadModelStore
from toolkit.readmodels.sqlite import SQLiteHome
from toolkit.write.context import BoundedContext
from toolkit.write.relay import Relay

pytestmark = pytest.mark.timeout(60)

ORDERS = 12
"""Orders placed; every fourth is cancelled."""


@dataclass
class Outcome:
    orders: list[UUID]
    cancelled: list[UUID]
    reactions: dict[str, tuple[int, int, int]]
    """Each policy's (reacted, rejected, parked)."""


async def run_chain(url: str, data_dir: Path) -> Outcome:
    """Place the orders, wait for their shipments and invoices, dispatch and pay those not
    cancelled, and wait until every relay and policy is at its head."""
    contexts: dict[str, BoundedContext[Any]] = {
        name: system.contexts[name](data_dir=data_dir) for name in ("sales", "shipping", "billing")
    }
    nc = await connect(url)
    stop = asyncio.Event()
    letters = [PolicyDeadLetters(dead_letters_path(data_dir, name)) for name in system.policies]
    try:
        relays = {name: Relay(context, nc) for name, context in contexts.items()}
        for relay in relays.values():
            await ensure_stream(nc.jetstream(), relay.stream)
        reactors: dict[str, Reactor[Any]] = {}
        for (name, policy), dead_letters in zip(system.policies.items(), letters, strict=True):
            context = contexts[system.policy_context(policy).name]
            reactors[name] = Reactor(PolicyRunner(policy(), context), dead_letters, nc)
        tasks: list[asyncio.Task[Any]] = [
            *(asyncio.create_task(r.run(stop)) for r in relays.values()),
            *(asyncio.create_task(r.run(stop)) for r in reactors.values()),
        ]
        settled = Settled(relays, reactors, {}, tasks)

        sales = contexts["sales"]
        assert isinstance(sales, Sales)
        ann = sales.register_customer("Ann", "ann@example.com")
        orders = [sales.place_order(ann, [TEAS]) for _ in range(ORDERS)]
        cancelled = orders[3::4]
        for order in cancelled:
            sales.cancel_order(order, "changed her mind")
        async with asyncio.timeout(20):
            await settled.wait()

        shipping, billing = contexts["shipping"], contexts["billing"]
        assert isinstance(shipping, Shipping) and isinstance(billing, Billing)
        for order in orders:
            if order not in cancelled:
                shipping.dispatch_shipment(order, "DHL")
                billing.pay_invoice(order)
        async with asyncio.timeout(20):
            await settled.wait()
        stop.set()
        await asyncio.gather(*tasks)
        return Outcome(
            orders,
            cancelled,
            {n: (r.stats.reacted, r.stats.rejected, r.stats.parked) for n, r in reactors.items()},
        )
    finally:
        await nc.close()
        for dead_letters in letters:
            dead_letters.close()
        for context in contexts.values():
            context.close()


def types_by_order(messages: list[Any]) -> Counter[tuple[str, str]]:
    """(event type, order id) of each message, counted."""
    bodies = [orjson.loads(m.data) for m in messages]
    return Counter((b["type"], b["data"]["order_id"]) for b in bodies if "order_id" in b["data"])


def logs(data_dir: Path) -> dict[str, object]:
    """Every context's log (each event's position, topic, aggregate and version) and
    every policy's tracking record."""
    seen: dict[str, object] = {}
    for name in ("sales", "shipping", "billing"):
        context = system.contexts[name](data_dir=data_dir)
        try:
            events = context.recorder.select_notifications(start=1, limit=10_000)
            seen[name] = [
                (n.id, n.topic, str(n.originator_id), n.originator_version) for n in events
            ]
            recorder = context.recorder
            assert isinstance(recorder, ProcessRecorder)
            for policy_name, policy in system.policies.items():
                if policy.context_name() == name:
                    for stream in policy().streams:
                        seen[f"{policy_name}:{stream}"] = recorder.max_tracking_id(
                            f"{policy_name}:{stream}"
                        )
        finally:
            context.close()
    return seen


async def streams(url: str) -> dict[str, list[Any]]:
    nc = await connect(url)
    try:
        return {name: await read_all(nc, name) for name in ("sales", "shipping", "billing")}
    finally:
        await nc.close()


def test_each_order_placed_causes_one_shipment_and_one_invoice_and_ends_shipped(
    nats_server: EmbeddedServer, data_dir: Path
) -> None:
    outcome = asyncio.run(run_chain(nats_server.url, data_dir))
    published = asyncio.run(streams(nats_server.url))

    orders = {str(order) for order in outcome.orders}
    live = orders - {str(order) for order in outcome.cancelled}
    shipping = types_by_order(published["shipping"])
    assert {o for t, o in shipping if t == "shipping.ShipmentRequested"} == orders
    assert {o for t, o in shipping if t == "shipping.ShipmentDispatched"} == live
    billing = types_by_order(published["billing"])
    assert {o for t, o in billing if t == "billing.InvoiceIssued"} == orders
    assert {o for t, o in billing if t == "billing.InvoicePaid"} == live
    sales = types_by_order(published["sales"])
    assert {o for t, o in sales if t == "sales.OrderShipped"} == live
    for counted in (shipping, billing, sales):
        assert set(counted.values()) == {1}  # each effect exactly once
    assert len(published["shipping"]) == ORDERS + len(live)  # calling off stays private
    assert outcome.reactions == {
        "ship-orders": (ORDERS + len(outcome.cancelled), 0, 0),  # placed, and cancelled
        "invoice-orders": (ORDERS + len(outcome.cancelled), 0, 0),
        "mark-shipped": (len(live), 0, 0),
    }

    sales_log = Sales(data_dir=data_dir)
    shipping_log, billing_log = Shipping(data_dir=data_dir), Billing(data_dir=data_dir)
    try:
        for order in outcome.orders:
            shipped = order not in outcome.cancelled
            assert sales_log.get_order(order).status == ("shipped" if shipped else "cancelled")
            shipment = shipping_log.get_shipment(order).status
            assert shipment == ("dispatched" if shipped else "called_off")
            assert billing_log.get_invoice(order).status == ("paid" if shipped else "void")
    finally:
        for context in (sales_log, shipping_log, billing_log):
            context.close()


def test_replaying_the_read_models_never_runs_a_policy_again(
    nats_server: EmbeddedServer, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(run_chain(nats_server.url, data_dir))
    before = logs(data_dir)
    args = ["--nats-url", nats_server.url, "--data-dir", str(data_dir)]

    for projection in system.projections:
        assert main([*args, "replay", projection]) == 0
    for policy in system.policies:  # what the replay read, the policies had processed
        assert main([*args, "react", policy, "--once"]) == 0
        assert f"{policy}: 0 reacted (0 events)" in capsys.readouterr().err

    assert logs(data_dir) == before
    # Sales' whole stream: a customer, 12 orders placed, 3 cancelled and 9 shipped.
    assert before["ship-orders:sales"] == before["invoice-orders:sales"] == 1 + ORDERS + 3 + 9
    assert before["mark-shipped:shipping"] == ORDERS + 9  # requested, dispatched


async def test_over_http_each_context_takes_its_commands_and_reads_come_back_by_token(
    nats_server: EmbeddedServer, data_dir: Path
) -> None:
    """``toolkit serve --policies all`` with the read models of shipping's and billing's
    streams kept live and served (their routers, which the example's system does not
    declare yet): an order placed, its shipment dispatched and its invoice paid over
    HTTP, each read back with the command's consistency token; sales marks it shipped."""
    settings = Settings(nats_url=nats_server.url, data_dir=data_dir)
    served = replace(system, routers={"dispatches": dispatches, "invoices": invoices})
    app = create_app(served, settings, policies=list(system.policies))
    nc = await connect(nats_server.url)
    stop = asyncio.Event()
    stores = [
        ReadModelStore(SQLiteHome(data_dir, p.name).live(), p) for p in (Dispatches(), Invoices())
    ]
    projecting = [asyncio.create_task(Projector(s.projection, s, nc).run(stop)) for s in stores]
    try:
        async with serving(app) as base, httpx.AsyncClient(base_url=base) as http:
            customer = await http.post("/sales/customers", json={"name": "Ann", "email": "a@x.org"})
            line = {"sku": "tea", "quantity": 12, "unit_price": "2.50"}
            placed = await http.post(
                "/sales/orders", json={"customer_id": customer.json()["id"], "lines": [line]}
            )
            order = placed.json()["id"]

            async def dispatch() -> httpx.Response | None:  # once shipping's policy ran
                answer = await http.post(
                    f"/shipping/shipments/{order}/dispatch", json={"carrier": "DHL"}
                )
                return None if answer.status_code == 404 else answer

            dispatched = await eventually(dispatch)
            assert dispatched.status_code == 200, dispatched.text
            token = dispatched.headers["Consistency-Token"]
            assert token.startswith("shipping:")
            read = await http.get(
                f"/shipping/dispatches/{order}", headers={"Consistency-Token": token}
            )
            assert read.status_code == 200, read.text
            assert (read.json()["status"], read.json()["carrier"]) == ("dispatched", "DHL")

            async def pay() -> httpx.Response | None:  # once billing's policy ran
                answer = await http.post(f"/billing/invoices/{order}/payment")
                return None if answer.status_code == 404 else answer

            paid = await eventually(pay)
            assert paid.json()["amount"] == "30.00"
            read = await http.get(
                f"/billing/invoices/{order}",
                headers={"Consistency-Token": paid.json()["consistency_token"]},
            )
            assert (read.json()["status"], read.json()["cents"]) == ("paid", 3000)

            sales = Sales(data_dir=data_dir)
            try:
                await wait_for(lambda: sales.get_order(UUID(order)).status == "shipped")
            finally:
                sales.close()
    finally:
        stop.set()
        await asyncio.gather(*projecting)
        for store in stores:
            store.close()
        await nc.close()
