"""Order confirmations: a pool of workers competing for sales' placed orders, each
confirmation sent once (a work queue, not a read model)."""

from projections.notifications.confirmations import Confirmations, confirmations

__all__ = ["Confirmations", "confirmations"]
