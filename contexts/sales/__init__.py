"""Sales: customers, their orders and the product catalogue. Publishes
CustomerRegistered, OrderPlaced, OrderCancelled, ProductListed and ProductRepriced; keeps
order notes private. Products are known by their SKUs (text ids), the rest by UUIDs."""

from contexts.sales.application import Sales
from contexts.sales.domain import Customer, Order, OrderLine, Product

__all__ = ["Customer", "Order", "OrderLine", "Product", "Sales"]
