"""Sales: customers and their orders. Publishes CustomerRegistered, OrderPlaced and
OrderCancelled; keeps order notes private."""

from contexts.sales.application import Sales
from contexts.sales.domain import Customer, Order, OrderLine

__all__ = ["Customer", "Order", "OrderLine", "Sales"]
