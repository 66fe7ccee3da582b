"""Sales' commands. Each validates its input before anything is stored."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from contexts.sales.domain import Customer, Order, OrderLine, Product
from contexts.sales.published import language
from toolkit import BoundedContext, InvalidCommand, UnknownAggregate

MAX_LINES = 100


class Sales(BoundedContext[UUID | str]):  # customers and orders by UUID, products by SKU
    name = "sales"
    published_language = language
    reacts = True  # its log keeps tracking records: its policy (contexts.sales.policy) runs on it

    def list_product(self, sku: str, name: str, unit_price: Decimal) -> str:
        """Add a product to the catalogue under ``sku``, any text (the context refuses
        an empty one, or one too long for a subject); listing a SKU twice conflicts."""
        name = name.strip()
        if not name:
            raise InvalidCommand("a product needs a name")
        product = Product(id=sku, name=name, unit_price=_price(unit_price))
        self.save(product)
        return product.id

    def reprice_product(self, sku: str, unit_price: Decimal) -> None:
        product = self.get_product(sku)
        product.reprice(unit_price=_price(unit_price))
        self.save(product)

    def get_product(self, sku: str) -> Product:
        try:
            product: object = self.repository.get(sku)
        except AggregateNotFoundError:
            product = None
        if not isinstance(product, Product):
            raise UnknownAggregate(f"no product {sku!r}")
        return product

    def register_customer(self, name: str, email: str) -> UUID:
        name, email = name.strip(), email.strip()
        if not name:
            raise InvalidCommand("a customer needs a name")
        if "@" not in email or len(email) > 254:
            raise InvalidCommand(f"{email!r} is not an email address")
        customer = Customer(name=name, email=email)
        self.save(customer)
        return customer.id

    def place_order(self, customer_id: UUID, lines: list[dict[str, Any]]) -> UUID:
        self._customer(customer_id)
        order = Order(customer_id=customer_id, lines=[_line(raw) for raw in _lines(lines)])
        self.save(order)
        return order.id

    def cancel_order(self, order_id: UUID, reason: str) -> None:
        order = self._order(order_id)
        if order.status == "cancelled":
            raise InvalidCommand(f"order {order_id} is already cancelled")
        if order.status == "shipped":
            raise InvalidCommand(f"order {order_id} is shipped already")
        if not reason.strip():
            raise InvalidCommand("a cancellation needs a reason")
        order.cancel(reason=reason.strip())
        self.save(order)

    def mark_order_shipped(self, order_id: UUID, shipment_id: UUID, carrier: str) -> None:
        """Record that shipping dispatched the order (its policy runs this from shipping's
        stream). Marked again, nothing more is stored; a cancelled order is refused: its
        shipment left after all, which someone must sort out (the policy keeps the reason)."""
        order = self._order(order_id)
        if order.status == "shipped":
            return
        if order.status == "cancelled":
            raise InvalidCommand(f"order {order_id} was cancelled, but shipment {shipment_id} left")
        order.mark_shipped(shipment_id=shipment_id, carrier=carrier)
        self.save(order)

    def add_order_note(self, order_id: UUID, text: str) -> None:
        order = self._order(order_id)
        order.add_note(text=text)
        self.save(order)

    def get_order(self, order_id: UUID) -> Order:
        return self._order(order_id)

    def _customer(self, customer_id: UUID) -> Customer:
        try:
            customer: object = self.repository.get(customer_id)
        except AggregateNotFoundError:
            customer = None
        if not isinstance(customer, Customer):  # an order's id is not a customer's
            raise UnknownAggregate(f"no customer {customer_id}")
        return customer

    def _order(self, order_id: UUID) -> Order:
        try:
            order: object = self.repository.get(order_id)
        except AggregateNotFoundError:
            order = None
        if not isinstance(order, Order):
            raise UnknownAggregate(f"no order {order_id}")
        return order


def _lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not isinstance(lines, list) or not lines:
        raise InvalidCommand("an order needs at least one line")
    if len(lines) > MAX_LINES:
        raise InvalidCommand(f"an order has at most {MAX_LINES} lines")
    return lines


def _line(raw: dict[str, Any]) -> OrderLine:
    try:
        sku = str(raw["sku"]).strip()
        quantity = raw["quantity"]
        unit_price = Decimal(str(raw["unit_price"]))
    except (KeyError, TypeError):
        raise InvalidCommand("each line needs sku, quantity and unit_price") from None
    except InvalidOperation:
        raise InvalidCommand(f"unit_price {raw.get('unit_price')!r} is not a number") from None
    if not sku:
        raise InvalidCommand("a line needs a sku")
    if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < 1:
        raise InvalidCommand(f"quantity {quantity!r} must be a whole number of at least 1")
    return OrderLine(sku=sku, quantity=quantity, unit_price=_price(unit_price))


def _price(unit_price: Decimal) -> Decimal:
    if not unit_price.is_finite() or unit_price < 0:
        raise InvalidCommand(f"unit_price {unit_price} must be zero or more")
    return unit_price
