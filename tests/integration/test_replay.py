from __future__ import annotations

import asyncio
import tempfile
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from contexts.sales import Customer, Order, Sales
from projections.billing import Accounts
from projections.shipping import Shipments
from tests.conftest import BACKENDS, wait_for
from tests.flow import home_of, project_all, relay_all
from toolkit.config import Settings
from toolkit.nats.connection import connect
from toolkit.nats.embedded import EmbeddedServer
from toolkit.read.projection import Projection
from toolkit.read.projector import Projector
from toolkit.read.replay import rebuild
from toolkit.read.store import ReadModelStore
from toolkit.readmodels import ReadModelHome
from toolkit.readmodels.sqlite import SQLiteHome
from toolkit.readmodels.tables import dump

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
    min_size=3,
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
            folds = plain_folds(sales)
            for projection in projections:
                await project_all(projection, folder, nc, batch_size=3)
                live = await assert_replay_equals_live(projection, folder, nc)
                assert live == folds[projection.name]
        finally:
            sales.close()
            await nc.close()


def plain_folds(sales: Sales) -> dict[str, dict[str, list[tuple[Any, ...]]]]:
    """The read models, folded in plain Python straight from the log's domain events,
    sharing no code with the translators, the projections or SQL."""
    shipments: dict[str, list[Any]] = {}
    accounts: dict[str, list[Any]] = {}
    charges: dict[str, list[Any]] = {}
    for n in sales.recorder.select_notifications(start=None, limit=10**6):
        e: Any = sales.mapper.to_domain_event(n)
        oid = str(e.originator_id)
        if isinstance(e, Customer.Registered):
            accounts[oid] = [oid, e.name, 0, 0]
        elif isinstance(e, Order.Placed):
            items = sum(line["quantity"] for line in e.lines)
            total = sum((line["unit_price"] * line["quantity"] for line in e.lines), Decimal(0))
            cents = int((total * 100).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
            since = e.timestamp.isoformat()
            shipments[oid] = [
                oid,
                str(e.customer_id),
                "awaiting_dispatch",
                -(-items // 10),
                items,
                since,
                None,
            ]
            charges[oid] = [oid, str(e.customer_id), cents, 0]
            accounts[str(e.customer_id)][2] += cents
            accounts[str(e.customer_id)][3] += 1
        elif isinstance(e, Order.Cancelled):
            shipments[oid][2:] = ["called_off", *shipments[oid][3:6], e.reason]
            if not charges[oid][3]:
                charges[oid][3] = 1
                accounts[charges[oid][1]][2] -= charges[oid][2]
                accounts[charges[oid][1]][3] -= 1

    def rows(table: dict[str, list[Any]]) -> list[tuple[Any, ...]]:
        return sorted(tuple(row) for row in table.values())

    return {
        "shipping": {"shipment": rows(shipments)},
        "billing": {"account": rows(accounts), "charge": rows(charges)},
    }


async def assert_replay_equals_live(
    projection: Projection, folder: Path, nc: Client
) -> dict[str, list[tuple[Any, ...]]]:
    home = SQLiteHome(folder, projection.name)
    with home.reader() as db:
        assert db is not None
        live = dump(db)
    result = await rebuild(type(projection)(), home, nc, keep_previous=True)
    assert result.switched and result.previous is not None
    with home.reader() as db:
        assert db is not None
        assert dump(db) == live
    assert result.previous.exists()
    return live


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=commands)
def test_live_equals_replayed_equals_a_plain_fold(script: list[tuple[object, ...]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        # Every history starts with a customer, so orders are possible from the first step.
        asyncio.run(live_then_replayed([("customer",), *script], Path(folder)))


@BACKENDS
async def test_replay_switches_readers_and_drops_the_old_generation(
    sales: Sales, nc: Client, read_models: Settings
) -> None:
    customer = sales.register_customer("Ann", "ann@example.com")
    sales.place_order(customer, [{"sku": "tea", "quantity": 1, "unit_price": "3.10"}])
    await relay_all(sales, nc)
    await project_all(Shipments(), read_models, nc)
    with home_of(read_models, "shipping") as home:
        before = home.current()
        result = await rebuild(Shipments(), home, nc)
        assert result.previous == before and result.generation == home.current() != before
        assert before is not None and not before.exists()
        assert [p.name for p in home.generations()] == [result.generation.name]
        assert result.generation.stem == "g000002"
    assert result.stats.applied == 1 and result.stats.skipped == 1


@BACKENDS
async def test_a_live_projector_follows_a_replay_into_the_new_generation(
    sales: Sales, nc: Client, read_models: Settings
) -> None:
    with home_of(read_models, "shipping") as home:
        await follow_a_replay(sales, nc, home)


async def follow_a_replay(sales: Sales, nc: Client, home: ReadModelHome) -> None:
    customer = sales.register_customer("Ann", "ann@example.com")
    line = [{"sku": "tea", "quantity": 1, "unit_price": "1.00"}]
    sales.place_order(customer, line)
    await relay_all(sales, nc)
    live = Projector(Shipments(), ReadModelStore(home.live(), Shipments()), nc)
    stop = asyncio.Event()
    running = asyncio.create_task(live.run(stop, home=home))
    await wait_for(lambda: live.stats.checkpoints.get("sales") == 2)
    old = live.store.path

    result = await rebuild(Shipments(), home, nc)  # while the live projector runs
    await wait_for(lambda: live.store.path == result.generation)
    assert not old.exists()

    later = sales.place_order(customer, line)
    await relay_all(sales, nc)
    await wait_for(lambda: live.stats.checkpoints.get("sales") == 3)
    with home.reader() as db:
        assert db is not None
        ids = {row[0] for row in db.execute("SELECT shipment_id FROM shipment")}
    assert str(later) in ids and len(ids) == 2  # applied to the generation readers use
    stop.set()
    await running
    live.store.close()
