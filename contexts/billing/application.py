"""Billing's commands. The policy issues and voids invoices (from sales' events); a
customer's payment, over HTTP, pays one."""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from contexts.billing.domain import Invoice
from contexts.billing.published import language
from toolkit import BoundedContext, InvalidCommand, UnknownAggregate


class Billing(BoundedContext[UUID]):
    name = "billing"
    published_language = language
    reacts = True  # its log keeps tracking records: its policy runs on it

    def issue_invoice(self, order_id: UUID, customer_id: UUID, amount: Decimal) -> UUID:
        """The order's invoice, issued once: asked again (an order published again), it is
        the one already issued, and nothing is stored."""
        if not amount.is_finite() or amount < 0:
            raise InvalidCommand(f"order {order_id} has no payable amount ({amount})")
        existing = self._find(order_id)
        if existing is not None:
            return existing.id
        invoice = Invoice(order_id=order_id, customer_id=customer_id, amount=amount)
        self.save(invoice)
        return invoice.id

    def pay_invoice(self, invoice_id: UUID) -> Decimal:
        """Pay the invoice in full; returns the amount paid."""
        invoice = self.get_invoice(invoice_id)
        if invoice.status == "void":
            raise InvalidCommand(f"invoice {invoice_id} is void: its order was cancelled")
        if invoice.status == "paid":
            raise InvalidCommand(f"invoice {invoice_id} is paid already")
        invoice.pay(customer_id=invoice.customer_id, amount=invoice.amount)
        self.save(invoice)
        return invoice.amount

    def void_invoice(self, invoice_id: UUID, reason: str) -> None:
        """Void the invoice of a cancelled order; a paid one cannot be (refused with the
        reason, which the policy keeps: a refund is not automated here)."""
        invoice = self.get_invoice(invoice_id)
        if invoice.status == "paid":
            raise InvalidCommand(f"invoice {invoice_id} was paid before its order was cancelled")
        if invoice.status != "void":
            invoice.void(reason=reason)
            self.save(invoice)

    def get_invoice(self, invoice_id: UUID) -> Invoice:
        invoice = self._find(invoice_id)
        if invoice is None:
            raise UnknownAggregate(f"no invoice {invoice_id}")
        return invoice

    def _find(self, invoice_id: UUID) -> Invoice | None:
        try:
            invoice: object = self.repository.get(invoice_id)
        except AggregateNotFoundError:
            return None
        return invoice if isinstance(invoice, Invoice) else None
