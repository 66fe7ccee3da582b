"""Competing consumers: a pool of workers shares a queue of jobs; each job is done once,
even when a worker dies with jobs in hand."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from uuid import UUID

from nats.aio.client import Client

from contexts.sales import Sales
from projections.notifications import Confirmations
from tests.conftest import wait_for
from tests.envelopes import relayed
from tests.flow import relay_all
from toolkit import StreamSpec, ensure_stream

LINE = [{"sku": "tea", "quantity": 1, "unit_price": "1.00"}]


async def test_a_worker_pool_sends_each_confirmation_once(
    sales: Sales, nc: Client, tmp_path: Path
) -> None:
    customer = sales.register_customer("Ann", "ann@example.com")
    orders = {str(sales.place_order(customer, LINE)) for _ in range(300)}
    await relay_all(sales, nc)
    confirmations = Confirmations(nc, tmp_path / "outbox.sqlite", ack_wait=1.0)
    stop = asyncio.Event()
    pool = [asyncio.create_task(confirmations.worker(f"w{i}", stop)) for i in range(3)]
    await wait_for(lambda: len(confirmations.sent()) == 300, within=30)
    stop.set()
    stats = await asyncio.gather(*pool)
    sent = confirmations.sent()
    assert {order for order, _, _ in sent} == orders  # every order, once (keyed outbox)
    assert sum(s.done for s in stats) == 300  # and each job done by exactly one worker
    assert len(Counter(worker for _, _, worker in sent)) >= 2  # the load was shared


async def test_jobs_of_a_worker_that_dies_go_to_the_others(
    sales: Sales, nc: Client, tmp_path: Path
) -> None:
    customer = sales.register_customer("Ann", "ann@example.com")
    orders = {str(sales.place_order(customer, LINE)) for _ in range(100)}
    await relay_all(sales, nc)
    confirmations = Confirmations(nc, tmp_path / "outbox.sqlite", ack_wait=1.0)
    await confirmations.queue.ensure()

    # A worker that takes jobs and dies before acknowledging any of them.
    sub = await nc.jetstream().pull_subscribe_bind(durable="confirmations", stream="sales")
    taken = await sub.fetch(10, timeout=5)
    assert len(taken) == 10
    await sub.unsubscribe()

    stop = asyncio.Event()
    survivor = asyncio.create_task(confirmations.worker("survivor", stop))
    await wait_for(lambda: len(confirmations.sent()) == 100, within=30)  # after ack_wait
    stop.set()
    stats = await survivor
    assert {order for order, _, _ in confirmations.sent()} == orders
    assert stats.done == 100


async def test_a_job_another_publisher_put_on_the_stream_is_never_done(
    sales: Sales, nc: Client, tmp_path: Path
) -> None:
    """A forged OrderPlaced for a real order, ahead of the relay's, took the order's place
    in the keyed outbox: the real confirmation was then never sent (issue 16's trust
    boundary, for work queues)."""
    customer = sales.register_customer("Ann", "ann@example.com")
    order = sales.place_order(customer, LINE)
    await ensure_stream(nc.jetstream(), StreamSpec("sales"))
    forged = {"order_id": str(order), "customer_id": str(UUID(int=666))}
    subject, body, _ = relayed("sales", 2, "sales.OrderPlaced", forged, aggregate_id=str(order))
    await nc.jetstream().publish(subject, body, headers={"Nats-Msg-Id": "x:2"})
    await relay_all(sales, nc)
    confirmations = Confirmations(nc, tmp_path / "outbox.sqlite", ack_wait=1.0)
    stop = asyncio.Event()
    worker = asyncio.create_task(confirmations.worker("w", stop))
    await wait_for(lambda: len(confirmations.sent()) == 1, within=30)
    stop.set()
    stats = await worker
    assert [(o, c) for o, c, _ in confirmations.sent()] == [(str(order), str(customer))]
    assert (stats.done, stats.untrusted) == (1, 1)
