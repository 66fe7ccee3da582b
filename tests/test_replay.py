from __future__ import annotations

import asyncio
import tempfile
from decimal import Decimal
from pathlib import Path
from uuid import UUID

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from contexts.sales import Sales
from projections.billing import Accounts
from projections.shipping import Shipments
from tests.flow import project_all, relay_all
from toolkit.connection import connect
from toolkit.embedded import EmbeddedServer
from toolkit.projection import Projection
from toolkit.replay import rebuild
from toolkit.store import ProjectionHome, dump

# A command: ("customer",), ("order", customer_pick, quantities), ("cancel", order_pick),
# ("note", order_pick), ("sync",) to let the live projections catch up mid-way.
commands = st.lists(
    st.one_of(
        st.just(("customer",)),
        st.tuples(
            st.just("order"),
            st.integers(0, 50),
            st.lists(st.integers(1, 30), min_size=1, max_size=3),
        ),
        st.tuples(st.just("cancel"), st.integers(0, 200)),
        st.tuples(st.just("note"), st.integers(0, 200)),
        st.just(("sync",)),
    ),
    min_size=1,
    max_size=40,
)


def run(
    sales: Sales, command: tuple[object, ...], customers: list[UUID], orders: list[UUID]
) -> None:
    match command:
        case ("customer",):
            n = len(customers)
            customers.append(sales.register_customer(f"C{n}", f"c{n}@example.com"))
        case ("order", int(pick), list(quantities)) if customers:
            lines = [
                {"sku": f"s{q}", "quantity": q, "unit_price": Decimal(q) / 7} for q in quantities
            ]
            orders.append(sales.place_order(customers[pick % len(customers)], lines))
        case ("cancel", int(pick)) if orders:
            order = orders[pick % len(orders)]
            if sales.get_order(order).status != "cancelled":
                sales.cancel_order(order, "property")
        case ("note", int(pick)) if orders:
            sales.add_order_note(orders[pick % len(orders)], "private")


async def live_then_replayed(script: list[tuple[object, ...]], folder: Path) -> None:
    with EmbeddedServer(folder / "nats") as server:
        nc = await connect(server.url)
        sales = Sales(data_dir=folder)
        customers: list[UUID] = []
        orders: list[UUID] = []
        projections: list[Projection] = [Shipments(), Accounts()]
        try:
            for command in script:
                if command == ("sync",):  # live projections apply in many small steps
                    await relay_all(sales, nc)
                    for projection in projections:
                        await project_all(projection, folder, nc, batch_size=3)
                else:
                    run(sales, command, customers, orders)
            await relay_all(sales, nc)
            for projection in projections:
                await project_all(projection, folder, nc, batch_size=3)
                await assert_replay_equals_live(projection, folder, nc)
        finally:
            sales.close()
            await nc.close()


async def assert_replay_equals_live(projection: Projection, folder: Path, nc: Client) -> None:
    home = ProjectionHome(folder, projection.name)
    with home.reader() as db:
        assert db is not None
        live = dump(db)
    result = await rebuild(type(projection)(), home, nc, keep_previous=True)
    assert result.switched and result.previous is not None
    with home.reader() as db:
        assert db is not None
        assert dump(db) == live
    assert result.previous.exists()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=commands)
def test_a_replayed_projection_equals_the_live_one(script: list[tuple[object, ...]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(live_then_replayed(script, Path(folder)))


async def test_replay_switches_readers_and_drops_the_old_generation(
    sales: Sales, nc: Client, data_dir: Path
) -> None:
    customer = sales.register_customer("Ann", "ann@example.com")
    sales.place_order(customer, [{"sku": "tea", "quantity": 1, "unit_price": "3.10"}])
    await relay_all(sales, nc)
    await project_all(Shipments(), data_dir, nc)
    home = ProjectionHome(data_dir, "shipping")
    before = home.current()
    result = await rebuild(Shipments(), home, nc)
    assert result.previous == before and result.generation == home.current() != before
    assert before is not None and not before.exists()
    assert [p.name for p in home.generations()] == [result.generation.name]
    assert result.stats.applied == 1 and result.stats.skipped == 1
