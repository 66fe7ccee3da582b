"""Billing's policy: an invoice for each order sales places, voided when the order is
cancelled. It reads sales' stream through billing's own translator."""

from __future__ import annotations

from contexts.billing.application import Billing
from contexts.billing.translation import InvoiceDue, InvoiceWithdrawn, sales
from toolkit import Policy


class InvoicePlacedOrders(Policy[Billing]):
    """Whenever sales places an order, issue its invoice; whenever it cancels one, void
    the invoice (refused, and kept with the reason, once paid)."""

    name = "invoice-orders"
    translators = (sales,)

    def react(self, fact: object, billing: Billing) -> None:
        if isinstance(fact, InvoiceDue):
            billing.issue_invoice(fact.order_id, fact.customer_id, fact.amount)
        elif isinstance(fact, InvoiceWithdrawn):
            billing.void_invoice(fact.order_id, fact.reason)
