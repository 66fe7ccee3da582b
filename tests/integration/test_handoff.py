"""The in-process relay takes the messages each save built instead of reading them back
from the log. The log stays the truth: what was handed over must be exactly what the
log would give, and whatever was not handed over is read from it."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from eventsourcing.domain import Aggregate, event
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from contexts.sales import Sales
from contexts.sales.domain import Order, OrderLine
from tests.conftest import wait_for
from tests.flow import MUGS, place_orders, public_positions, read_all
from toolkit import BoundedContext, IntegrationEvent, PublishedLanguage, Relay, contract
from toolkit.write.outbox import Outbox
from toolkit.write.published import OutgoingMessage

lines = st.lists(
    st.builds(
        OrderLine,
        sku=st.text(min_size=1, max_size=8).map(str.strip).filter(bool),
        quantity=st.integers(min_value=1, max_value=99),
        unit_price=st.decimals(min_value=0, max_value=10_000, places=2),
    ),
    min_size=1,
    max_size=3,
)
steps = st.lists(
    st.one_of(
        # a save of this process: some orders, some with a private note, one transaction
        st.tuples(
            st.just("save"), st.lists(st.tuples(lines, st.booleans()), min_size=1, max_size=3)
        ),
        st.tuples(st.just("cancel"), st.text(min_size=1, max_size=10).filter(str.strip)),
        st.tuples(st.just("other process saves"), lines),
        st.tuples(st.just("read"), st.integers(min_value=1, max_value=10)),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    script=steps,
    limit=st.integers(min_value=1, max_value=12),
    name=st.text(min_size=1),
    group_commit=st.sampled_from(["on", "off"]),
)
def test_the_pages_handed_over_are_the_pages_of_the_log(
    script: list[tuple[str, Any]], limit: int, name: str, group_commit: str
) -> None:
    """Whatever the saves, the other writers, the hand-off's limit and where the reads
    fall: the messages read through the hand-off are those of the log, byte for byte,
    each once, in log order; handed over by the group commit's writing thread (a page a
    transaction, built from the events as stored) or by each save (group commit off)."""
    with tempfile.TemporaryDirectory() as folder:
        env = {"TOOLKIT_GROUP_COMMIT": group_commit}
        ours, other = Sales(env=env, data_dir=folder), Sales(env=env, data_dir=folder)
        outbox = Outbox(ours, handoff_limit=limit)
        read: list[OutgoingMessage] = []
        position = 0

        def read_page(size: int) -> None:
            nonlocal position
            page = outbox.read(position, ours.recorder.max_notification_id() or 0, size)
            read.extend(page.messages)
            position = page.position

        try:
            with outbox.handing_over():
                customer = ours.register_customer(name.strip() or "Ann", "ann@example.com")
                orders: list[Order] = []
                for kind, arg in script:
                    if kind == "save":
                        saved = [Order(customer_id=customer, lines=ls) for ls, _ in arg]
                        for order, (_, noted) in zip(saved, arg, strict=True):
                            if noted:
                                order.add_note(text="private")
                        ours.save(*saved)
                        orders += saved
                    elif kind == "cancel" and orders:
                        ours.cancel_order(orders.pop().id, arg)
                    elif kind == "other process saves":
                        other.place_order(customer, [_raw(line) for line in arg])
                    elif kind == "read":
                        read_page(arg)
                head = ours.recorder.max_notification_id() or 0
                while position < head:
                    read_page(1000)
            assert read == Outbox(ours).read(0, head, head + 1).messages
            assert [m.log_position for m in read] == public_positions(ours)
        finally:
            ours.close()
            other.close()


def _raw(line: OrderLine) -> dict[str, Any]:
    return {**line, "unit_price": str(line["unit_price"])}


async def test_the_relay_in_the_process_publishes_what_saves_hand_over(
    sales: Sales, nc: Client
) -> None:
    """On SQLite and PostgreSQL: nothing is read back from the log, and the stream holds
    what a relay reading the log would have published, byte for byte."""
    relay = Relay(sales, nc)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        await wait_for(lambda: relay.idle)
        place_orders(sales, 20, note_every=3, line=MUGS)  # 1 customer, 20 orders, 7 private notes
        await wait_for(lambda: relay.stats.stream_sequence == 21)
    finally:
        stop.set()
        await task
    assert relay.outbox.pages_read == 0 and relay.outbox.pages_handed_over == 28

    head = sales.recorder.max_notification_id() or 0
    from_log = Outbox(sales).read(0, head, head + 1).messages
    stream = await read_all(nc)
    assert [(m.subject, m.data, m.headers["Nats-Msg-Id"]) for m in stream] == [
        (m.subject, m.body, m.headers["Nats-Msg-Id"]) for m in from_log
    ]
    assert sales._saved_listeners == []  # the relay stopped taking hand-offs


@pytest.mark.parametrize("whole", [True, False], ids=["transaction page", "save by save"])
async def test_saves_of_one_group_commit_handing_over_out_of_order_are_not_read_back(
    sales: Sales, nc: Client, whole: bool
) -> None:
    """With group commit the threads of one shared transaction go on in any order. The
    writing thread hands the transaction's messages over as one page; where it cannot
    (here made so), the relay, woken by a later save of a group, waits for the earlier
    ones to hand over (the group commit told it they committed). Either way nothing is
    read from the log, and every message is on the stream once, in log order, as read
    from the log."""
    grouped = sales.group_commit
    assert grouped is not None  # on by default

    def odd_ones_late(recordings: list[Any]) -> None:  # (a listener before the outbox's)
        if recordings[0].notification.id % 2:
            time.sleep(0.01)

    remove = sales.on_saved(odd_ones_late)
    relay = Relay(sales, nc)
    relay.outbox.patience = 60  # (no fallback to the log on a slow machine: none is needed)
    if not whole:
        relay.outbox._transaction_page = lambda *_: None  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        await wait_for(lambda: relay.idle)
        customer = sales.register_customer("Ann", "ann@example.com")
        before = grouped.groups

        def place(_: int) -> None:
            for _ in range(8):
                sales.place_order(customer, [MUGS])

        with ThreadPoolExecutor(16) as threads:
            await asyncio.gather(
                *(asyncio.get_running_loop().run_in_executor(threads, place, n) for n in range(16))
            )
        assert grouped.groups > before  # saves were written together
        head = sales.recorder.max_notification_id() or 0
        await wait_for(lambda: relay.stats.position == head, within=30)
    finally:
        stop.set()
        await task
        remove()
    assert relay.outbox.pages_read == 0
    saves = 1 + 16 * 8  # the customer, the orders
    if whole:
        assert relay.outbox.pages_handed_over < saves  # a page a transaction
    else:
        assert relay.outbox.pages_handed_over == saves
    from_log = Outbox(sales).read(0, head, head + 1).messages
    stream = await read_all(nc)
    assert [(m.subject, m.data, m.headers["Nats-Msg-Id"]) for m in stream] == [
        (m.subject, m.body, m.headers["Nats-Msg-Id"]) for m in from_log
    ]


async def test_grouped_saves_not_handed_over_are_read_from_the_log_without_waiting(
    sales: Sales, nc: Client
) -> None:
    """A save that comes to the hand-off and hands nothing over (here: the hand-off is
    full) says so: the relay reads it from the log at once, not after its patience."""
    relay = Relay(sales, nc, handoff_limit=0)
    relay.outbox.patience = 60  # (a save waited for would stall the relay past the test)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        await wait_for(lambda: relay.idle)
        customer = sales.register_customer("Ann", "ann@example.com")
        with ThreadPoolExecutor(16) as threads:
            await asyncio.gather(
                *(
                    asyncio.get_running_loop().run_in_executor(
                        threads, sales.place_order, customer, [MUGS]
                    )
                    for _ in range(64)
                )
            )
        head = sales.recorder.max_notification_id() or 0
        await wait_for(lambda: relay.stats.position == head, within=10)
    finally:
        stop.set()
        await task
    assert relay.outbox.pages_handed_over == 0 and relay.outbox.pages_read > 0
    positions = [orjson.loads(m.data)["logposition"] for m in await read_all(nc)]
    assert positions == public_positions(sales)


async def test_a_save_that_never_hands_over_is_read_from_the_log_after_the_patience(
    sales: Sales, nc: Client
) -> None:
    """A listener before the outbox's that raises keeps a committed save from handing
    over (the command fails, its events are stored), where its transaction's page was
    not built (here made so): the relay waits for it no longer than its patience, then
    reads it from the log; nothing is lost or out of order."""
    relay = Relay(sales, nc)
    relay.outbox.patience = 0.2
    relay.outbox._transaction_page = lambda *_: None  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    refused: list[int] = []

    def refuse_one(recordings: list[Any]) -> None:
        if not refused and recordings[0].notification.id > 2:
            refused.append(recordings[0].notification.id)
            raise RuntimeError("a listener failed")

    remove = sales.on_saved(refuse_one)  # (removed below, after the relay's are)
    try:
        await wait_for(lambda: relay.idle)
        customer = sales.register_customer("Ann", "ann@example.com")

        def place(_: int) -> None:
            for _ in range(4):
                with contextlib.suppress(RuntimeError):
                    sales.place_order(customer, [MUGS])

        with ThreadPoolExecutor(8) as threads:
            await asyncio.gather(
                *(asyncio.get_running_loop().run_in_executor(threads, place, n) for n in range(8))
            )
        head = sales.recorder.max_notification_id() or 0
        await wait_for(lambda: relay.stats.position == head, within=10)
    finally:
        stop.set()
        await task
        remove()
    assert refused and relay.outbox.pages_read >= 1
    positions = [orjson.loads(m.data)["logposition"] for m in await read_all(nc)]
    assert positions == public_positions(sales) and refused[0] in positions


async def test_saves_of_another_process_in_between_are_read_from_the_log(
    sales: Sales, nc: Client, log_env: dict[str, str], data_dir: Path
) -> None:
    writer = Sales(env=log_env, data_dir=data_dir)
    relay = Relay(sales, nc, poll_interval=0.05)
    try:
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        try:
            for owner in (sales, writer, sales, writer, sales):
                place_orders(owner, 4, note_every=3, line=MUGS)
                await wait_for(lambda: relay.lag() == 0)
        finally:
            stop.set()
            await task
        positions = [orjson.loads(m.data)["logposition"] for m in await read_all(nc)]
        assert positions == public_positions(sales)
        assert relay.outbox.pages_read > 0 and relay.outbox.pages_handed_over > 0
    finally:
        writer.close()


class Tally(Aggregate):
    class Counted(Aggregate.Event):
        by: int

    total = 0

    @event(Counted)
    def count(self, by: int) -> None:
        self.total += by


tally_language = PublishedLanguage("tally")


@contract("tally.Counted", version=1)
class Counted(IntegrationEvent, frozen=True, kw_only=True):
    by: int


@tally_language.maps(Tally.Counted, to=Counted)
def counted(e: Tally.Counted) -> Counted:
    if e.by < 0:
        raise ValueError("a negative count cannot be published")
    return Counted(by=e.by)


class Tallies(BoundedContext):
    name = "tally"
    published_language = tally_language


async def test_a_translation_failing_at_save_fails_the_relay_not_the_command(
    data_dir: Path, nc: Client
) -> None:
    """The save has committed when it hands over: the command succeeds, and the relay,
    reading that save from the log, stops with the translation's error as it would have
    without the hand-off. What came before is on the stream."""
    tallies = Tallies(data_dir=data_dir)
    try:
        relay = Relay(tallies, nc)
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop))
        await wait_for(lambda: relay.idle)
        tally = Tally()
        tally.count(by=2)
        tallies.save(tally)
        await wait_for(lambda: relay.stats.stream_sequence == 1)
        tally.count(by=-1)
        tallies.save(tally)  # stored, though it cannot be published
        with pytest.raises(ValueError, match="negative count"):
            await asyncio.wait_for(task, 10)
        assert relay.outbox.pages_handed_over == 1  # the failing save was read back
        stream = await read_all(nc, "tally")
        assert [orjson.loads(m.data)["data"] for m in stream] == [{"by": 2}]
        assert tallies.repository.get(tally.id).total == 1
    finally:
        tallies.close()


def test_decimal_prices_survive_the_hand_off_exactly(data_dir: Path) -> None:
    """The hand-off translates the events as saved, the log read as decoded: both must
    give the same bytes, Decimal and datetime included."""
    sales = Sales(data_dir=data_dir)
    try:
        outbox = Outbox(sales)
        with outbox.handing_over():
            customer = sales.register_customer("Zoë", "zoe@example.com")
            sales.place_order(customer, [{"sku": "ü", "quantity": 3, "unit_price": "0.10"}])
            handed = outbox.read(0, 1, 10).messages + outbox.read(1, 2, 10).messages
        assert outbox.pages_handed_over == 2
        assert handed == Outbox(sales).read(0, 2, 10).messages
        assert orjson.loads(handed[1].body)["data"]["total"] == str(Decimal("0.30"))
    finally:
        sales.close()
