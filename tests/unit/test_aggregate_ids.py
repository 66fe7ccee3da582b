"""toolkit.Aggregate's new ids follow creation order (UUID version 7), so a read model
keyed by them takes each new row at the end of its indexes; ids derived from a create_id's
arguments are kept as they are."""

from __future__ import annotations

import threading
from uuid import UUID

from eventsourcing.domain import event

from contexts.billing.domain import Invoice
from contexts.sales.domain import Order
from toolkit import Aggregate

LINE = {"sku": "tea", "quantity": 1, "unit_price": "2.00"}


class Thing(Aggregate):
    class Made(Aggregate.Created):
        name: str

    @event(Made)
    def __init__(self, name: str) -> None:
        self.name = name


def test_new_ids_are_version_7_in_the_order_aggregates_are_created() -> None:
    ids = [Thing("x").id for _ in range(50_000)]
    assert {i.version for i in ids} == {7}
    assert ids == sorted(ids)  # within a millisecond too: the ids are monotonic
    assert len(set(ids)) == len(ids)
    assert str(ids[0]) < str(ids[-1])  # as text too (a read model's TEXT key)


def test_ids_from_many_threads_are_all_different() -> None:
    made: list[list[UUID]] = [[] for _ in range(8)]

    def make(into: list[UUID]) -> None:
        into.extend(Thing("x").id for _ in range(5_000))

    threads = [threading.Thread(target=make, args=(m,)) for m in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({i for m in made for i in m}) == 40_000
    assert all(m == sorted(m) for m in made)


def test_sales_orders_get_them_and_ids_derived_from_arguments_are_kept() -> None:
    order = Order(customer_id=Thing("c").id, lines=[LINE])  # type: ignore[list-item]
    assert order.id.version == 7
    assert Invoice.create_id(order_id=order.id) == order.id  # billing's: the order's own
