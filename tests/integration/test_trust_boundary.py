"""The trust boundary on a context's stream: only the relay's own messages move a
consumer's log position or the relay's resume point. Whatever another client publishes
on the stream, with any headers, ends as a dead letter and hides, repeats or reorders
none of the relay's events (issue 16, cases 1 and 2)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from uuid import UUID

import httpx
import orjson
import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from contexts.sales import Sales
from contexts.system import system
from projections.shipping import Shipments
from tests.conftest import create_read_models, serving
from tests.envelopes import relayed, stream_message
from tests.flow import (
    assert_equal_to_a_clean_build,
    home_of,
    place_orders,
    project_all,
    public_positions,
    read_all,
)
from toolkit import Relay, RelayError, StreamSpec, ensure_stream
from toolkit.config import Settings
from toolkit.http.app import create_app
from toolkit.nats.connection import connect
from toolkit.nats.embedded import EmbeddedServer
from toolkit.nats.streams import relay_tail
from toolkit.ops.status import collect
from toolkit.read.batches import apply_batch
from toolkit.read.reader import StreamMessage
from toolkit.read.store import ReadModelStore
from toolkit.readmodels.sqlite import SQLiteHome
from toolkit.readmodels.tables import dead_letters as read_dead_letters
from toolkit.readmodels.tables import dump


def foreign_messages(position: int) -> list[tuple[bytes, dict[str, str]]]:
    """Messages another publisher might put on ``sales.>``: ids that name a log position
    far ahead (64 bits and beyond), other contexts' ids, unicode digits, envelopes that
    disagree with their id, and a perfect copy of the relay's id over a foreign body."""
    _, body, _ = relayed("sales", position, "sales.OrderCancelled", {"order_id": "x"})
    envelope = orjson.loads(body)
    after = {**envelope, "id": f"sales:{position + 1}"}
    return [  # (JetStream drops a message id it has seen: each is new)
        (b"{}", {"Nats-Msg-Id": "sales:999999999"}),
        (b"{}", {"Nats-Msg-Id": f"sales:{2**64}"}),
        (b"{}", {"Nats-Msg-Id": "billing:999999999"}),
        (b"{}", {"Nats-Msg-Id": "sales:\u00b2"}),  # a digit to str.isdigit, not to int()
        (b"{}", {"Nats-Msg-Id": "x:sales:999999999"}),
        (body, {"Nats-Msg-Id": "sales:999999998"}),  # the id disagrees with the envelope
        (orjson.dumps({**envelope, "source": "billing"}), {"Nats-Msg-Id": f"sales:{position}"}),
        (
            json.dumps({**after, "logposition": 2**70}).encode(),
            {"Nats-Msg-Id": f"sales:{position + 1}"},
        ),
        (body, {}),
    ]


async def test_another_publishers_messages_hide_no_event_from_consumers(
    data_dir: Path, nc: Client, tmp_path: Path
) -> None:
    """Case 1: a message whose Nats-Msg-Id ends in a large number made every projection
    skip every later event as a 'duplicate', and a replay lost them too."""
    sales = Sales(data_dir=data_dir)
    try:
        place_orders(sales, 3, cancel_every=2)
        await Relay(sales, nc).run(until_head=True)
        for body, headers in foreign_messages(10**6):
            await nc.jetstream().publish("sales.order.x.OrderCancelled", body, headers=headers)
        place_orders(sales, 4, cancel_every=3)
        await Relay(sales, nc).run(until_head=True)
        placed = {
            str(UUID(str(n.originator_id)))
            for n in sales.recorder.select_notifications(start=1, limit=10_000)
            if n.topic.endswith("Order.Placed")
        }
    finally:
        sales.close()
    stats = await project_all(Shipments(), data_dir, nc)
    foreign = len(foreign_messages(1))
    assert (stats.untrusted, stats.duplicates) == (foreign, 0)
    with SQLiteHome(data_dir, "shipping").reader() as db:
        assert db is not None
        assert {row[0] for row in db.execute("SELECT shipment_id FROM shipment")} == placed
        letters = read_dead_letters(db)
    assert len(letters) == foreign
    assert all(letter.reason.startswith("not published by the sales relay: ") for letter in letters)
    assert all(len(letter.reason) < 400 for letter in letters)
    await assert_equal_to_a_clean_build(data_dir, Shipments(), nc, tmp_path / "clean")


async def relay_stops(sales: Sales, nc: Client, match: str) -> None:
    """The relay refuses to go on, at once and for good (no spinning), saying ``match``."""
    with pytest.raises(RelayError, match=match) as raised:
        async with asyncio.timeout(10):
            await Relay(sales, nc, retry_delay=0.01).run(until_head=True)
    assert not raised.value.transient and "\n" not in str(raised.value)


async def test_a_forged_last_message_stops_the_relay_without_publishing_twice(
    sales: Sales, nc: Client
) -> None:
    """Case 2: a forged last message in the relay's own form made the relay resume from
    whatever position it named: events were published twice, or it started over for ever."""
    place_orders(sales, 6, cancel_every=2)
    head = (await Relay(sales, nc).run(until_head=True)).stream_sequence
    positions = public_positions(sales)
    # The relay's form exactly, but not the log's event at that position.
    subject, body, _ = relayed(
        "sales", positions[1], "sales.OrderPlaced", {}, aggregate_id="someone-else"
    )
    await nc.jetstream().publish(subject, body, headers={"Nats-Msg-Id": f"sales@1:{positions[1]}"})
    place_orders(sales, 2, cancel_every=5)
    await relay_stops(sales, nc, r"says log position \d+ is 'someone-else' version 1, but")
    assert len(await read_all(nc)) == head + 1  # nothing published after it

    # Once it is removed, the relay goes on after its own last message, each event once.
    await nc.jetstream().delete_msg("sales", head + 1)
    await Relay(sales, nc).run(until_head=True)
    relayed_positions = [
        int(m.headers["Nats-Msg-Id"].rpartition(":")[2]) for m in await read_all(nc)
    ]
    assert relayed_positions == public_positions(sales)


async def test_a_copy_of_an_earlier_event_stops_the_relay_without_publishing_twice(
    sales: Sales, nc: Client
) -> None:
    """A genuine earlier message published again by someone else (under an id JetStream
    has not seen) agrees with the log; that it repeats an earlier position gives it away."""
    place_orders(sales, 6, cancel_every=2)
    head = (await Relay(sales, nc).run(until_head=True)).stream_sequence
    copy = (await read_all(nc))[1]
    position = copy.headers["Nats-Msg-Id"].rpartition(":")[2]
    await nc.jetstream().publish(
        copy.subject, copy.data, headers={"Nats-Msg-Id": f"sales@7:{position}"}
    )
    place_orders(sales, 2, cancel_every=5)
    await relay_stops(sales, nc, rf"sequence {head + 1} repeats log position {position} after")
    assert len(await read_all(nc)) == head + 1


async def test_a_stream_of_only_others_messages_gets_the_whole_log(
    sales: Sales, nc: Client
) -> None:
    await ensure_stream(nc.jetstream(), StreamSpec("sales"))
    for body, headers in foreign_messages(3):
        await nc.jetstream().publish("sales.order.x.OrderCancelled", body, headers=headers)
    place_orders(sales, 3, cancel_every=2)
    await Relay(sales, nc).run(until_head=True)
    mine = [m for m in await read_all(nc) if m.sequence > len(foreign_messages(3))]
    assert [int(m.headers["Nats-Msg-Id"].rpartition(":")[2]) for m in mine] == public_positions(
        sales
    )


def test_a_foreign_message_id_moves_no_log_position(tmp_path: Path) -> None:
    """Case 1 at the store: after another publisher's ``sales:999999999`` the relay's
    next events were skipped as 'duplicates' (their positions are smaller)."""
    shipments = [str(UUID(int=i)) for i in (1, 2, 3)]
    data = {"customer_id": str(UUID(int=9)), "lines": [], "placed_at": "2026-11-24T06:43:30Z"}

    def placed(sequence: int, position: int, order: str) -> StreamMessage:
        return stream_message(
            sequence, "sales.OrderPlaced", {**data, "order_id": order}, position=position,
            aggregate_id=order,
        )  # fmt: skip

    foreign = [
        StreamMessage("sales", 2, "sales.order.x.E", headers, body)
        for body, headers in foreign_messages(10**6)[:1]
    ]
    with home_of(tmp_path, "shipping") as home:
        store = ReadModelStore(home.live(), Shipments())
        try:
            translator = Shipments.translators[0]
            result = apply_batch(store, translator, [placed(1, 1, shipments[0]), *foreign])
            result = apply_batch(
                store, translator, [placed(3, 2, shipments[1]), placed(4, 4, shipments[2])]
            )
            assert (result.applied, result.duplicates) == (2, 0)
            rows = dump(store.db)["shipment"]
        finally:
            store.close()
    assert sorted(row[0] for row in rows) == shipments


async def test_the_relay_in_serve_goes_on_by_itself_once_a_forged_message_is_removed(
    nats_server: EmbeddedServer, data_dir: Path
) -> None:
    """Case 3: after a foreign message stopped the relay inside `toolkit serve` and was
    removed, the relay never started again until serve restarted, and readiness kept
    the stale reason."""
    settings = Settings(nats_url=nats_server.url, data_dir=data_dir)
    create_read_models(data_dir, *system.projections.values())  # readiness waits for them
    nc = await connect(nats_server.url)
    try:
        async with (
            serving(create_app(system, settings)) as base,
            httpx.AsyncClient(base_url=base, timeout=10) as http,
        ):
            customer = await http.post("/sales/customers", json={"name": "A", "email": "a@x"})
            assert customer.status_code == 201
            await eventually(lambda: has_messages(nc, 1))
            copy = (await read_all(nc))[0]
            # A copy under an epoch id the relay never used, so JetStream stores it.
            await nc.jetstream().publish(
                copy.subject, copy.data, headers={"Nats-Msg-Id": "sales@9:1"}
            )
            await http.post("/sales/customers", json={"name": "B", "email": "b@x"})

            async def stopped_saying_why() -> bool:
                ready = await http.get("/health/ready")
                return ready.status_code == 503 and any(
                    "repeats log position 1" in reason for reason in ready.json()["reasons"]
                )

            async def ready() -> bool:
                return (await http.get("/health/ready")).status_code == 200

            await eventually(stopped_saying_why)
            await nc.jetstream().delete_msg("sales", 2)
            # It looks again by itself, within seconds, and goes on.
            await eventually(lambda: has_messages(nc, 2))
            await eventually(ready)
            positions = [m.headers["Nats-Msg-Id"] for m in await read_all(nc)]
            assert positions == ["sales:1", "sales:2"]
    finally:
        await nc.close()


async def has_messages(nc: Client, count: int) -> bool:
    """Whether the sales stream holds at least ``count`` messages now."""
    try:
        return int((await nc.jetstream().stream_info("sales")).state.messages) >= count
    except NotFoundError:
        return False


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 20.0) -> None:
    """Await until ``check()`` is true; fail after ``within`` seconds."""
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 (a condition in other processes)
            await asyncio.sleep(0.02)


async def test_the_search_for_the_relays_last_message_is_bounded(sales: Sales, nc: Client) -> None:
    place_orders(sales, 1, cancel_every=2)
    await Relay(sales, nc).run(until_head=True)
    for body, headers in foreign_messages(3):
        await nc.jetstream().publish("sales.order.x.OrderCancelled", body, headers=headers)
    head = (await nc.jetstream().stream_info("sales")).state.last_seq
    found = await relay_tail(nc.jetstream(), "sales")
    assert found.last is not None and found.gave_up_at is None
    assert [sequence for sequence, _ in found.others] == list(range(head, found.last.sequence, -1))
    cut = await relay_tail(nc.jetstream(), "sales", probes=3)
    assert cut.last is None and cut.gave_up_at == head - 3
    assert [sequence for sequence, _ in cut.others] == [head, head - 1, head - 2]


async def test_status_believes_no_forgery_and_counts_no_deleted_message(
    data_dir: Path, nc: Client, nats_server: EmbeddedServer
) -> None:
    """Found by the pipeline state machine: status took a forgery in the relay's exact
    form for the relay's last message (relayed_to past the log's head, nothing said of
    the relay stopping), and counted messages deleted at the stream's end as events a
    projection was behind, for ever."""
    sales = Sales(data_dir=data_dir)
    try:
        place_orders(sales, 2, cancel_every=2)
        relayed_to = (await Relay(sales, nc).run(until_head=True)).position
        await project_all(Shipments(), data_dir, nc)
        subject, body, headers = relayed("sales", 10**6, "sales.OrderCancelled", {})
        forged = (await nc.jetstream().publish(subject, body, headers=headers)).seq
        settings = Settings(nats_url=nats_server.url, data_dir=data_dir)
        said = await collect(system, settings, nc)
        relay = said["contexts"]["sales"]
        assert (relay["relayed_to"], relay["relay_lag"]) == (relayed_to, 0)
        assert f"remove it (nats stream rmm sales {forged})" in relay["problems"][0]
        assert any(f"sales sequence {forged}" in p for p in said["problems"])
        lag = said["projections"]["shipping"]["streams"]["sales"]["lag_events"]
        assert lag == 1  # the forgery, which the projection will dead-letter
        await nc.jetstream().delete_msg("sales", forged)  # as the relay says to
        said = await collect(system, settings, nc)
        assert said["projections"]["shipping"]["streams"]["sales"]["lag_events"] == 0
        assert "problems" not in said["contexts"]["sales"]
    finally:
        sales.close()


async def test_status_counts_only_public_events_as_relay_lag(
    data_dir: Path, nc: Client, nats_server: EmbeddedServer
) -> None:
    """Found by the pipeline state machine: events the published language does not map
    (order notes) counted as relay lag, so a relay that had carried everything was said
    to be behind."""
    sales = Sales(data_dir=data_dir)
    try:
        place_orders(sales, 2, cancel_every=2)
        await Relay(sales, nc).run(until_head=True)
        line = {"sku": "tea", "quantity": 1, "unit_price": "1.00"}
        order = sales.place_order(sales.register_customer("B", "b@x.org"), [line])
        sales.add_order_note(order, "private")  # the log now ends in a private event
        settings = Settings(nats_url=nats_server.url, data_dir=data_dir)
        relay = (await collect(system, settings, nc))["contexts"]["sales"]
        assert relay["relay_lag"] == 2  # the customer and the order; not the note
        await Relay(sales, nc).run(until_head=True)
        relay = (await collect(system, settings, nc))["contexts"]["sales"]
        assert relay["relay_lag"] == 0 and relay["log_head"] > relay["relayed_to"]
    finally:
        sales.close()
