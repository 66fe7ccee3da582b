"""Billing: an invoice for each order sales places, paid by a command. Publishes
InvoiceIssued and InvoicePaid; keeps an invoice's voiding private. Reacts to sales'
stream through a translator of its own (:mod:`contexts.billing.policy`)."""

from contexts.billing.application import Billing
from contexts.billing.domain import Invoice

__all__ = ["Billing", "Invoice"]
