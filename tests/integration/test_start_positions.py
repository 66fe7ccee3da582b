"""A projection joins a stream where it chooses, and from then on goes on from its
checkpoint."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from nats.aio.client import Client

from contexts.sales import Sales
from projections.shipping import Shipments
from tests.flow import project_all, relay_all
from toolkit.read.projection import StartPosition
from toolkit.readmodels.sqlite import SQLiteHome

LINE = [{"sku": "tea", "quantity": 1, "unit_price": "1.00"}]


def starting_at(start: StartPosition) -> Shipments:
    class Joining(Shipments):
        starts_at = start

    return Joining()


def shipped(data_dir: Path) -> set[str]:
    with SQLiteHome(data_dir, "shipping").reader() as db:
        assert db is not None
        return {row[0] for row in db.execute("SELECT shipment_id FROM shipment")}


async def orders(sales: Sales, nc: Client, n: int) -> list[str]:
    customer = sales.register_customer("Ann", "ann@example.com")
    placed = [str(sales.place_order(customer, LINE)) for _ in range(n)]
    await relay_all(sales, nc)
    return placed


async def test_from_the_beginning(sales: Sales, nc: Client, data_dir: Path) -> None:
    placed = await orders(sales, nc, 3)
    await project_all(starting_at("beginning"), data_dir, nc)
    assert shipped(data_dir) == set(placed)


async def test_new_events_only_and_then_from_the_checkpoint(
    sales: Sales, nc: Client, data_dir: Path
) -> None:
    await orders(sales, nc, 3)  # before the projection joins: not for it
    await project_all(starting_at("new"), data_dir, nc)
    assert shipped(data_dir) == set()
    later = await orders(sales, nc, 2)  # published while it is not running
    await project_all(starting_at("new"), data_dir, nc)  # a restart does not choose again
    assert shipped(data_dir) == set(later)


async def test_from_a_sequence(sales: Sales, nc: Client, data_dir: Path) -> None:
    placed = await orders(sales, nc, 4)  # sequence 1 is the customer, 2..5 the orders
    await project_all(starting_at(4), data_dir, nc)
    assert shipped(data_dir) == set(placed[2:])


async def test_from_a_time(sales: Sales, nc: Client, data_dir: Path) -> None:
    await orders(sales, nc, 2)
    await asyncio.sleep(0.05)  # stored times must differ on either side of the moment
    moment = datetime.now(UTC)
    later = await orders(sales, nc, 2)
    await project_all(starting_at(moment), data_dir, nc)
    assert shipped(data_dir) == set(later)


def test_the_default_is_the_beginning() -> None:
    assert Shipments.starts_at == "beginning"
