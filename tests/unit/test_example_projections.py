"""The example system end to end without a server: sales' commands, the events its relay
would publish, and shipping's and billing's read models kept from them, through
:mod:`toolkit.testing` (the relay's outbox, the projector's batches, the real store)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from uuid import UUID

import pytest

from contexts.billing import Billing
from contexts.billing.policy import InvoicePlacedOrders
from contexts.sales import Sales
from contexts.shipping import Shipping
from contexts.shipping.policy import ShipPlacedOrders
from projections.billing import Accounts
from projections.billing.invoices import Invoices
from projections.billing.translation import OrderPlaced as BillingOrderPlaced
from projections.shipping import Shipments
from projections.shipping.dispatches import Dispatches
from projections.shipping.translation import ShipmentAwaitingDispatch
from projections.shipping.translation import sales as shipping_translator
from toolkit import IntegrationEvent, PolicyRunner, Translator, contract
from toolkit.testing import (
    ProjectionHarness,
    PublishedEvent,
    in_memory,
    published_by,
    published_events,
    relayed_event,
    translate,
    upcast,
)


@pytest.fixture
def sales() -> Iterator[Sales]:
    context = in_memory(Sales)
    yield context
    context.close()


def place_orders(sales: Sales) -> tuple[UUID, UUID, UUID, list[PublishedEvent]]:
    """Ada places two orders and cancels the second; a private note goes with the first."""
    with published_by(sales) as published:
        ada = sales.register_customer("Ada", "ada@example.com")
        kept = sales.place_order(
            ada,
            [
                {"sku": "tea.green", "quantity": 3, "unit_price": Decimal("4.50")},
                {"sku": "cup", "quantity": 9, "unit_price": Decimal("2.25")},
            ],
        )
        sales.add_order_note(kept, "leave it at the door")
        cancelled = sales.place_order(
            ada, [{"sku": "tea.black", "quantity": 1, "unit_price": Decimal("10")}]
        )
        sales.cancel_order(cancelled, "changed my mind")
    return ada, kept, cancelled, published


def test_sales_publishes_its_language_and_keeps_notes_private(sales: Sales) -> None:
    ada, kept, _, published = place_orders(sales)

    assert [(event.type, event.version) for event in published] == [
        ("sales.CustomerRegistered", 1),
        ("sales.OrderPlaced", 1),
        ("sales.OrderPlaced", 1),
        ("sales.OrderCancelled", 1),
    ]
    assert [event.position for event in published] == [1, 2, 4, 5]  # 3: the private note
    placed = published[1]
    assert placed.subject == f"sales.order.{kept}.OrderPlaced"
    assert placed.headers == {"Nats-Msg-Id": "sales:2"}
    assert placed.aggregate_id == str(kept)
    assert placed.data["customer_id"] == str(ada)
    assert placed.data["total"] == "33.75"  # decimals travel as text
    assert published[3].data["reason"] == "changed my mind"


def test_shipping_keeps_a_shipment_per_order(sales: Sales) -> None:
    ada, kept, cancelled, published = place_orders(sales)

    with ProjectionHarness(Shipments()) as shipping:
        counts = shipping.feed(published)

        assert (counts.applied, counts.skipped) == (3, 1)  # customers are not its business
        assert shipping.query(
            "SELECT shipment_id, recipient_id, status, parcels, items, called_off_because "
            "FROM shipment ORDER BY items"
        ) == [
            (str(cancelled), str(ada), "called_off", 1, 1, "changed my mind"),
            (str(kept), str(ada), "awaiting_dispatch", 2, 12, None),
        ]
        assert shipping.checkpoint() == 4
        assert shipping.position() == 5
        assert shipping.dead_letters == []


def test_billing_charges_an_account_and_waives_what_is_cancelled(sales: Sales) -> None:
    ada, kept, cancelled, published = place_orders(sales)

    with ProjectionHarness(Accounts()) as billing:
        billing.feed(published)

        assert billing.query(
            "SELECT account_id, holder, owed_cents, open_charges FROM account"
        ) == [(str(ada), "Ada", 3375, 1)]
        assert billing.query("SELECT charge_id, cents, waived FROM charge ORDER BY cents") == [
            (str(cancelled), 1000, 1),
            (str(kept), 3375, 0),
        ]


def test_events_published_again_are_not_applied_twice(sales: Sales) -> None:
    """A relay that publishes again after its stream lost messages: new sequences, the
    same log positions, which the read model has passed."""
    *_, published = place_orders(sales)

    with ProjectionHarness(Accounts(), batch_size=2) as billing:
        billing.feed(published)
        before = billing.dump()
        again = billing.feed(published[2:])

        assert (again.applied, again.duplicates) == (0, 2)
        assert billing.dump() == before
        assert billing.checkpoint() == 6


def test_commands_after_the_first_feed_are_projected_from_the_checkpoint(sales: Sales) -> None:
    _, kept, _, published = place_orders(sales)
    with ProjectionHarness(Shipments()) as shipping:
        shipping.feed(published)
        with published_by(sales) as later:
            sales.cancel_order(kept, "out of stock")

        shipping.feed(later)

        assert shipping.query(
            "SELECT status FROM shipment WHERE shipment_id = ?", (str(kept),)
        ) == [("called_off",)]
        assert (shipping.checkpoint(), shipping.position()) == (5, 6)


def test_a_version_newer_than_shipping_reads_is_a_dead_letter_parking_its_order() -> None:
    newer = relayed_event("sales.OrderPlaced", {"order_id": "o1"}, version=2, position=1)
    with ProjectionHarness(Shipments()) as shipping:
        counts = shipping.feed([newer])

        assert counts.dead_lettered == 1
        (dead,) = shipping.dead_letters
        assert "sales.OrderPlaced v2 is newer than this consumer reads (up to v1)" in dead.reason
        assert shipping.checkpoint() == 1  # the checkpoint passes over it


def test_the_translator_turns_a_published_order_into_a_shipment(sales: Sales) -> None:
    _, kept, _, published = place_orders(sales)

    (fact,) = translate(shipping_translator, published[1])

    assert isinstance(fact, ShipmentAwaitingDispatch)
    assert (fact.shipment_id, fact.parcels, fact.items) == (kept, 2, 12)


@contract("sales.OrderPlaced", version=2)
class OrderPlacedV2(IntegrationEvent, frozen=True, kw_only=True):
    """What billing would read if sales added a currency to OrderPlaced (v2)."""

    order_id: str
    customer_id: str
    total: Decimal
    currency: str


def billing_reading_v2() -> Translator:
    billing = Translator("sales")

    @billing.on(OrderPlacedV2)
    def placed(e: OrderPlacedV2) -> OrderPlacedV2:
        return e

    @billing.upcast(BillingOrderPlaced, to=OrderPlacedV2)
    def v1_to_v2(e: BillingOrderPlaced) -> OrderPlacedV2:
        return OrderPlacedV2(
            order_id=e.order_id, customer_id=e.customer_id, total=e.total, currency="EUR"
        )

    return billing


def test_what_sales_publishes_today_upcasts_to_a_currency_in_euros(sales: Sales) -> None:
    ada, kept, _, published = place_orders(sales)

    upcast_event = upcast(billing_reading_v2(), published[1])

    assert upcast_event == OrderPlacedV2(
        order_id=str(kept), customer_id=str(ada), total=Decimal("33.75"), currency="EUR"
    )


def test_shipping_and_billing_streams_keep_their_own_read_models(sales: Sales) -> None:
    """Shipping's and billing's policies react to sales' orders; what the two contexts
    then publish keeps ``dispatches`` and ``invoices`` (one stream each)."""
    _, kept, cancelled, published = place_orders(sales)
    messages = [event.message(i) for i, event in enumerate(published, start=1)]
    shipping, billing = in_memory(Shipping), in_memory(Billing)
    try:
        PolicyRunner(ShipPlacedOrders(), shipping).apply(messages)
        PolicyRunner(InvoicePlacedOrders(), billing).apply(messages)
        shipping.dispatch_shipment(kept, "DHL")
        billing.pay_invoice(kept)

        with ProjectionHarness(Dispatches()) as dispatches:
            dispatches.feed(published_events(shipping))
            assert dispatches.query(
                "SELECT shipment_id, order_id, parcels, status, carrier FROM dispatch "
                "ORDER BY parcels DESC"
            ) == [
                (str(kept), str(kept), 2, "dispatched", "DHL"),
                (str(cancelled), str(cancelled), 1, "requested", None),  # called off: private
            ]
        with ProjectionHarness(Invoices()) as invoices:
            invoices.feed(published_events(billing))
            assert invoices.query(
                "SELECT invoice_id, cents, status, paid_at IS NOT NULL FROM invoice ORDER BY cents"
            ) == [(str(cancelled), 1000, "issued", 0), (str(kept), 3375, "paid", 1)]
    finally:
        shipping.close()
        billing.close()
