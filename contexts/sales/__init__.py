"""Sales: customers, their orders and the product catalogue. Publishes
CustomerRegistered, OrderPlaced, OrderCancelled, OrderShipped, ProductListed and
ProductRepriced; keeps order notes private. Products are known by their SKUs (text ids),
the rest by UUIDs. Marks orders shipped from shipping's stream (contexts.sales.policy)."""

from contexts.sales.application import Sales
from contexts.sales.domain import Customer, Order, OrderLine, Product

__all__ = ["Customer", "Order", "OrderLine", "Product", "Sales"]
