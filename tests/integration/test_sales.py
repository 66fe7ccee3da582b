from __future__ import annotations

from decimal import Decimal
from uuid import uuid4

import pytest

from contexts.sales import Sales
from toolkit import ConflictError, InvalidCommand

GOOD = {"sku": "tea", "quantity": 1, "unit_price": "1.00"}


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        ([], "at least one line"),
        ([{"sku": "tea"}], "needs sku, quantity and unit_price"),
        ([{**GOOD, "quantity": 0}], "at least 1"),
        ([{**GOOD, "quantity": 1.5}], "whole number"),
        ([{**GOOD, "quantity": True}], "whole number"),
        ([{**GOOD, "unit_price": "abc"}], "not a number"),
        ([{**GOOD, "unit_price": "-1"}], "zero or more"),
        ([{**GOOD, "unit_price": "NaN"}], "zero or more"),
        ([{**GOOD, "sku": "  "}], "needs a sku"),
        ([GOOD] * 101, "at most 100 lines"),
    ],
)
def test_bad_orders_are_rejected_before_anything_is_stored(
    sales: Sales, lines: list[dict[str, object]], reason: str
) -> None:
    customer = sales.register_customer("Ann", "ann@example.com")
    head = sales.recorder.max_notification_id()
    with pytest.raises(InvalidCommand, match=reason):
        sales.place_order(customer, lines)
    assert sales.recorder.max_notification_id() == head


def test_orders_need_a_known_customer_and_customers_an_email(sales: Sales) -> None:
    with pytest.raises(InvalidCommand, match="no customer"):
        sales.place_order(uuid4(), [GOOD])
    with pytest.raises(InvalidCommand, match="not an email"):
        sales.register_customer("Ann", "ann")
    assert not sales.recorder.max_notification_id()


def test_racing_commands_on_one_order_one_wins(sales: Sales) -> None:
    customer = sales.register_customer("Ann", "ann@example.com")
    order_id = sales.place_order(customer, [GOOD])
    first = sales.get_order(order_id)
    second = sales.get_order(order_id)
    first.cancel(reason="first")
    sales.save(first)
    second.add_note(text="late")
    head = sales.recorder.max_notification_id()
    with pytest.raises(ConflictError, match="changed by another command"):
        sales.save(second)
    assert sales.recorder.max_notification_id() == head
    assert sales.get_order(order_id).notes == []


def test_order_totals_are_exact(sales: Sales) -> None:
    customer = sales.register_customer("Ann", "ann@example.com")
    order_id = sales.place_order(customer, [{"sku": "a", "quantity": 3, "unit_price": "0.10"}])
    assert sales.get_order(order_id).total == Decimal("0.30")
