"""The example's policies without a server: shipping and billing react to sales' orders,
sales to shipping's dispatches, each through a translator of its own, fed what the other
context's relay would publish (:mod:`toolkit.testing`) and run by :class:`PolicyRunner`,
as ``toolkit react`` runs them. Logs are SQLite in memory."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from fastapi import FastAPI

from contexts.billing import Billing
from contexts.billing.api import router as billing_commands
from contexts.billing.policy import InvoicePlacedOrders
from contexts.sales import Sales
from contexts.sales.policy import MarkDispatchedOrdersShipped
from contexts.shipping import Shipping
from contexts.shipping.api import router as shipping_commands
from contexts.shipping.policy import ShipPlacedOrders
from toolkit import InvalidCommand, PolicyRunner
from toolkit.http.problems import install as install_problems
from toolkit.read.reader import StreamMessage
from toolkit.testing import (
    PublishedEvent,
    in_memory,
    published_by,
    published_events,
    relayed_event,
)

TEA = {"sku": "tea", "quantity": 12, "unit_price": Decimal("2.50")}
MUG = {"sku": "mug", "quantity": 1, "unit_price": Decimal("9.99")}


@pytest.fixture
def sales() -> Iterator[Sales]:
    context = in_memory(Sales)
    yield context
    context.close()


@pytest.fixture
def shipping() -> Iterator[Shipping]:
    context = in_memory(Shipping)
    yield context
    context.close()


@pytest.fixture
def billing() -> Iterator[Billing]:
    context = in_memory(Billing)
    yield context
    context.close()


class Stream:
    """One context's stream as its relay fills it: each event the next sequence."""

    def __init__(self) -> None:
        self.messages: list[StreamMessage] = []

    def add(self, events: list[PublishedEvent]) -> list[StreamMessage]:
        start = len(self.messages) + 1
        added = [event.message(start + i) for i, event in enumerate(events)]
        self.messages += added
        return added


def types(context: Any) -> list[str]:
    return [event.type for event in published_events(context)]


def orders(sales: Sales, stream: Stream) -> tuple[UUID, UUID, UUID]:
    """Ann places two orders and cancels the second."""
    with published_by(sales) as published:
        ann = sales.register_customer("Ann", "ann@example.com")
        kept = sales.place_order(ann, [TEA])
        dropped = sales.place_order(ann, [MUG, TEA])
        sales.cancel_order(dropped, "found a cheaper mug")
    stream.add(published)
    return ann, kept, dropped


def test_shipping_requests_one_shipment_per_order_whatever_is_delivered_again(
    sales: Sales, shipping: Shipping
) -> None:
    stream = Stream()
    ann, kept, dropped = orders(sales, stream)
    runner = PolicyRunner(ShipPlacedOrders(), shipping)

    counts = runner.apply(stream.messages)
    again = runner.apply(stream.messages)  # redelivered: processed already

    assert (counts.reacted, counts.events, counts.skipped) == (3, 3, 1)  # not customers
    assert (again.reacted, again.duplicates) == (0, 4)
    assert types(shipping) == ["shipping.ShipmentRequested"] * 2  # called off: private
    shipment = shipping.get_shipment(kept)
    assert (shipment.order_id, shipment.recipient_id, shipment.items, shipment.parcels) == (
        kept, ann, 12, 2,
    )  # fmt: skip
    assert shipping.get_shipment(dropped).status == "called_off"
    assert runner.position("sales") == 4

    # sales' relay publishes the same events again under new sequences (its stream lost
    # them): new messages to the policy, yet the same orders, so nothing more happens.
    republished = [
        StreamMessage(m.stream, m.sequence + 4, m.subject, m.headers, m.data)
        for m in stream.messages
    ]
    log_head = shipping.recorder.max_notification_id()
    assert runner.apply(republished).rejected == 0
    assert shipping.recorder.max_notification_id() == log_head


def test_a_shipment_dispatched_cannot_be_called_off_and_the_reason_is_kept(
    sales: Sales, shipping: Shipping
) -> None:
    stream = Stream()
    _, kept, dropped = orders(sales, stream)
    runner = PolicyRunner(ShipPlacedOrders(), shipping)
    runner.apply(stream.messages)
    shipping.dispatch_shipment(kept, "DHL")
    with pytest.raises(InvalidCommand, match="was called off"):
        shipping.dispatch_shipment(dropped, "DHL")
    with pytest.raises(InvalidCommand, match="dispatched already"):
        shipping.dispatch_shipment(kept, "DHL")

    with published_by(sales) as later:
        sales.cancel_order(kept, "too late")
    counts = runner.apply(stream.add(later))

    assert counts.rejected == 1 and shipping.get_shipment(kept).status == "dispatched"
    assert [r.reason for r in runner.rejected] == [
        f"shipment {kept} was dispatched before its order was cancelled"
    ]


def test_billing_issues_one_invoice_per_order_voids_on_cancellation_and_is_paid(
    sales: Sales, billing: Billing
) -> None:
    stream = Stream()
    ann, kept, dropped = orders(sales, stream)
    runner = PolicyRunner(InvoicePlacedOrders(), billing)
    runner.apply(stream.messages)
    runner.apply(stream.messages)

    invoice = billing.get_invoice(kept)
    assert (invoice.customer_id, invoice.amount, invoice.status) == (ann, Decimal("30.00"), "open")
    assert billing.get_invoice(dropped).status == "void"
    with pytest.raises(InvalidCommand, match="is void"):
        billing.pay_invoice(dropped)
    assert billing.pay_invoice(kept) == Decimal("30.00")
    with pytest.raises(InvalidCommand, match="paid already"):
        billing.pay_invoice(kept)

    assert types(billing) == ["billing.InvoiceIssued"] * 2 + ["billing.InvoicePaid"]
    paid = published_events(billing)[-1]
    assert paid.data["invoice_id"] == paid.data["order_id"] == str(kept)
    assert (paid.data["customer_id"], paid.data["amount"]) == (str(ann), "30.00")

    with published_by(sales) as later:  # a paid invoice is not voided: refused, kept
        sales.cancel_order(kept, "changed my mind")
    assert runner.apply(stream.add(later)).rejected == 1
    assert runner.rejected[0].reason == f"invoice {kept} was paid before its order was cancelled"


def test_sales_marks_an_order_shipped_once_when_shipping_dispatches_it(
    sales: Sales, shipping: Shipping
) -> None:
    from_sales, from_shipping = Stream(), Stream()
    _, kept, dropped = orders(sales, from_sales)
    PolicyRunner(ShipPlacedOrders(), shipping).apply(from_sales.messages)
    with published_by(shipping) as dispatched:
        shipping.dispatch_shipment(kept, "DHL")
    from_shipping.add(published_events(shipping, after=0)[:2])  # the two requests
    from_shipping.add(dispatched)
    runner = PolicyRunner(MarkDispatchedOrdersShipped(), sales)

    with published_by(sales) as published:
        counts = runner.apply(from_shipping.messages)
        again = runner.apply(from_shipping.messages)

    assert (counts.reacted, counts.skipped, again.duplicates) == (1, 2, 3)
    assert sales.get_order(kept).status == "shipped"
    assert [
        (e.type, e.data["order_id"], e.data["shipment_id"], e.data["carrier"]) for e in published
    ] == [("sales.OrderShipped", str(kept), str(kept), "DHL")]
    with pytest.raises(InvalidCommand, match="shipped already"):
        sales.cancel_order(kept, "too late")

    # A dispatch of a cancelled order's shipment, or of an order sales does not know:
    # refused, recorded as processed, the reason kept.
    stray = Shipping(
        env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": ":memory:"}
    )
    try:
        unknown = uuid4()
        stray.request_shipment(dropped, uuid4(), 1)
        stray.request_shipment(unknown, uuid4(), 1)
        with published_by(stray) as odd:
            stray.dispatch_shipment(dropped, "DHL")
            stray.dispatch_shipment(unknown, "DHL")
    finally:
        stray.close()
    # (stray's log counts from 1 again: renumbered after shipping's, as one stream holds
    # one log's positions in order; a copy of a position reacted to is passed over)
    odd = [
        relayed_event(e.type, e.data, position=100 + n, aggregate_id=e.aggregate_id)
        for n, e in enumerate(odd)
    ]
    assert runner.apply(from_shipping.add(odd)).rejected == 2
    assert [r.reason for r in runner.rejected] == [
        f"order {dropped} was cancelled, but shipment {dropped} left",
        f"no order {unknown}",
    ]
    assert runner.position("shipping") == 5


async def test_the_command_endpoints_dispatch_and_pay(
    sales: Sales, shipping: Shipping, billing: Billing
) -> None:
    stream = Stream()
    _, kept, dropped = orders(sales, stream)
    PolicyRunner(ShipPlacedOrders(), shipping).apply(stream.messages)
    PolicyRunner(InvoicePlacedOrders(), billing).apply(stream.messages)
    app = FastAPI()
    install_problems(app)  # as create_app does: refusals become 422, 404 or 409
    app.include_router(shipping_commands(shipping))
    app.include_router(billing_commands(billing))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://example") as http:
        await _dispatch_and_pay(http, kept, dropped)


async def _dispatch_and_pay(http: httpx.AsyncClient, kept: UUID, dropped: UUID) -> None:
    def dispatch(shipment: UUID, body: object = None) -> Any:
        return http.post(
            f"/shipping/shipments/{shipment}/dispatch", json=body or {"carrier": "DHL"}
        )

    def pay(invoice: UUID) -> Any:
        return http.post(f"/billing/invoices/{invoice}/payment")

    done = await dispatch(kept)
    assert done.status_code == 200
    assert done.json() == {"id": str(kept), "consistency_token": "shipping:4"}
    assert done.headers["Consistency-Token"] == "shipping:4"
    again = await dispatch(kept)
    assert again.status_code == 422 and "dispatched already" in again.text
    called_off = await dispatch(dropped)
    assert called_off.status_code == 422
    assert (await dispatch(uuid4())).status_code == 404
    assert (await dispatch(kept, {"carrier": 7})).status_code == 422  # strict: not text

    paid = await pay(kept)
    assert paid.status_code == 200
    assert paid.json() == {"id": str(kept), "amount": "30.00", "consistency_token": "billing:4"}
    assert (await pay(kept)).status_code == 422
    assert (await pay(dropped)).status_code == 422
    assert (await pay(uuid4())).status_code == 404
