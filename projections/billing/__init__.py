"""Billing's view of sales: customer accounts and the amounts they owe, in cents."""

from projections.billing.projection import Accounts

__all__ = ["Accounts"]
