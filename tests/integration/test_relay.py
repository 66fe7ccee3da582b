from __future__ import annotations

import asyncio
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from nats.aio.client import Client

from contexts.sales import Sales
from tests.conftest import eventually, wait_for
from tests.flow import MUGS, place_orders, public_positions, read_all
from toolkit import Relay, RelayError
from toolkit.nats.connection import connect
from toolkit.nats.embedded import EmbeddedServer
from toolkit.write import relay as relay_module
from toolkit.write import resume
from toolkit.write.outbox import Outbox
from toolkit.write.watch import LogWatcher


async def test_relay_publishes_the_published_language_in_log_order(
    sales: Sales, nc: Client
) -> None:
    customer, orders = place_orders(sales, 30, note_every=3, line=MUGS)
    sales.cancel_order(orders[4], "too late")
    stats = await Relay(sales, nc, batch_size=7, window=5).run(until_head=True)
    assert stats.published == 32  # the ten notes stay in sales
    assert stats.position == sales.recorder.max_notification_id() == 42

    messages = await read_all(nc)
    assert [m.sequence for m in messages] == list(range(1, 33))
    envelopes = [orjson.loads(m.data) for m in messages]
    positions = [e["logposition"] for e in envelopes]
    assert positions == sorted(positions)
    assert [m.headers["Nats-Msg-Id"] for m in messages] == [f"sales:{p}" for p in positions]
    types = [e["type"] for e in envelopes]
    assert types[0] == "sales.CustomerRegistered" and types[-1] == "sales.OrderCancelled"
    assert "NoteAdded" not in " ".join(m.subject for m in messages)

    first_order = messages[1]
    assert first_order.subject == f"sales.order.{orders[0]}.OrderPlaced"
    assert first_order.headers["Nats-Msg-Id"] == f"sales:{positions[1]}"
    envelope = orjson.loads(first_order.data)
    assert envelope == {
        "specversion": "1.0",
        "id": f"sales:{positions[1]}",
        "source": "sales",
        "type": "sales.OrderPlaced",
        "schemaversion": 1,
        "subject": str(orders[0]),
        "time": envelope["time"],
        "aggregatetype": "order",
        "aggregateversion": 1,
        "logposition": positions[1],
        "datacontenttype": "application/json",
        "data": {
            "order_id": str(orders[0]),
            "customer_id": str(customer),
            "lines": [{"sku": "mug-blue", "quantity": 2, "unit_price": "4.50"}],
            "total": "9.00",
            "placed_at": envelope["data"]["placed_at"],
        },
    }
    assert datetime.fromisoformat(envelope["time"]).tzinfo is not None


async def test_restarted_relays_resume_without_duplicates(sales: Sales, nc: Client) -> None:
    place_orders(sales, 20, note_every=3, line=MUGS)
    await Relay(sales, nc).run(until_head=True)
    await Relay(sales, nc).run(until_head=True)  # nothing new: publishes nothing
    place_orders(sales, 5, note_every=3, line=MUGS)
    stats = await Relay(sales, nc).run(until_head=True)
    assert stats.published == 6  # one customer and five orders, no more
    messages = await read_all(nc)
    ids = [m.headers["Nats-Msg-Id"] for m in messages]
    assert len(ids) == len(set(ids)) == 27


async def test_a_relay_catching_up_reads_on_without_waiting(sales: Sales, nc: Client) -> None:
    """Page after page until the head it read, with no rest in between (polling is set
    far away: a rest would take half a minute)."""
    place_orders(sales, 40, note_every=3, line=MUGS)
    relay = Relay(sales, nc, batch_size=5, poll_interval=30)
    stats = await asyncio.wait_for(relay.run(until_head=True), 10)
    assert stats.published == len(public_positions(sales))


async def test_live_relay_is_woken_by_saves_and_reports_lag(sales: Sales, nc: Client) -> None:
    relay = Relay(sales, nc, poll_interval=30)  # no polling: only a save can wake it
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    await wait_for(lambda: relay.stats.stream_sequence == 0 and not task.done())
    place_orders(sales, 3, note_every=3, line=MUGS)
    await wait_for(lambda: relay.stats.stream_sequence == 4)
    assert relay.lag() == 0
    stop.set()
    await task


async def test_a_stream_written_from_another_log_is_refused(
    sales: Sales, nc: Client, tmp_path: Path
) -> None:
    place_orders(sales, 5, note_every=3, line=MUGS)
    await Relay(sales, nc).run(until_head=True)
    other = Sales(data_dir=tmp_path / "other")  # an empty log, same stream name
    try:
        with pytest.raises(RelayError, match="written from another log"):
            await Relay(other, nc).run(until_head=True)
    finally:
        other.close()


async def test_a_foreign_writer_on_the_stream_is_passed_over(
    sales: Sales, nc: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Another publisher's message after the relay's last neither stops the relay nor
    moves where it goes on: the next events follow it, each once."""
    place_orders(sales, 2, note_every=3, line=MUGS)
    first = (await Relay(sales, nc).run(until_head=True)).stream_sequence
    await nc.jetstream().publish("sales.order.x.Intruder", b"{}")
    place_orders(sales, 2, note_every=3, line=MUGS)
    stats = await Relay(sales, nc).run(until_head=True)
    assert f"published by something else (sequence {first + 1}" in caplog.text
    positions = [
        int(m.headers["Nats-Msg-Id"].partition(":")[2])
        for m in await read_all(nc)
        if "Nats-Msg-Id" in m.headers
    ]
    assert positions == public_positions(sales)  # each once, in log order
    assert stats.stream_sequence == len(positions) + 1


async def test_a_relay_on_its_own_sees_writes_of_other_processes(
    sales: Sales, nc: Client, log_env: dict[str, str], data_dir: Path
) -> None:
    """Another instance's saves do not reach this relay's in-process listeners: on
    PostgreSQL the log's NOTIFY wakes it (polling is set far away), SQLite is polled."""
    writer = Sales(env=log_env, data_dir=data_dir)
    relay = Relay(sales, nc, poll_interval=60 if log_env else 0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        await wait_for(lambda: relay.idle)
        place_orders(writer, 3, note_every=3, line=MUGS)
        await wait_for(lambda: relay.stats.stream_sequence == 4, within=5)
    finally:
        stop.set()
        await task
        writer.close()


async def test_two_relays_racing_on_one_stream_store_each_event_once_in_order(
    sales: Sales, nats_server: EmbeddedServer
) -> None:
    """Only every tenth message asks for an acknowledgement, so a refusal in between is
    seen at the next one that asks; each relay then starts over from the stream. The
    chain (Nats-Expected-Last-Sequence on every message) keeps the stream the log's
    public events, once each, in order, whoever wins each race."""
    place_orders(sales, 600, note_every=3, line=MUGS)
    clients = [await connect(nats_server.url) for _ in range(2)]
    try:
        relays = [
            Relay(
                sales,
                nc,
                batch_size=50,
                window=40,
                ack_every=10,
                retry_delay=0.001,
                max_retry_delay=0.001,
            )
            for nc in clients
        ]
        await asyncio.gather(*(relay.run(until_head=True) for relay in relays))
        messages = await read_all(clients[0])
    finally:
        for nc in clients:
            await nc.close()
    positions = [orjson.loads(m.data)["logposition"] for m in messages]
    assert positions == public_positions(sales)
    assert [m.sequence for m in messages] == list(range(1, len(positions) + 1))
    assert sum(relay.stats.restarts for relay in relays) > 0  # they did race
    # A duplicate acknowledgement for what the other relay stored is not a loss: the ids
    # stay those of the log positions (new ids are for a stream that lost messages).
    assert [m.headers["Nats-Msg-Id"] for m in messages] == [f"sales:{p}" for p in positions]
    assert [relay.stats.republished_from for relay in relays] == [None, None]


async def test_the_relay_stores_what_nats_py_publish_would(
    sales: Sales, nc: Client, nats_server: EmbeddedServer
) -> None:
    """The relay writes its messages' frames into nats-py's buffer itself; through a
    client whose publish was replaced (an instrumented one) it publishes through that:
    the stream holds the same subjects, headers and bodies either way."""
    place_orders(sales, 30, note_every=3, line=MUGS)
    await Relay(sales, nc, window=8, ack_every=3).run(until_head=True)
    framed = [(m.subject, m.headers, m.data) for m in await read_all(nc)]
    await nc.jetstream().delete_stream("sales")
    instrumented = await connect(nats_server.url)
    publish = instrumented.publish
    calls = 0

    async def counted(subject: str, *args: object, **kwargs: object) -> None:
        nonlocal calls
        calls += subject.startswith("sales.")  # (API requests publish too)
        await publish(subject, *args, **kwargs)  # type: ignore[arg-type]

    instrumented.publish = counted  # type: ignore[method-assign]
    try:
        await Relay(sales, instrumented, window=8, ack_every=3).run(until_head=True)
    finally:
        await instrumented.close()
    assert calls == len(framed) == len(public_positions(sales))
    assert [(m.subject, m.headers, m.data) for m in await read_all(nc)] == framed
    assert framed[1][1] == {
        "Nats-Msg-Id": f"sales:{public_positions(sales)[1]}",
        "Nats-Expected-Last-Sequence": "1",
        "Nats-Expected-Last-Msg-Id": f"sales:{public_positions(sales)[0]}",
    }


async def test_woken_by_a_save_the_relay_reads_no_head_and_checks_the_tail_as_it_publishes(
    sales: Sales, nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save of the relay's process says where the log ends, so the relay it wakes
    reads no head; and instead of looking the stream's tail up after its rest, its next
    message says that the relay's last one must still be the last on its subject
    (nats-server 2.11 on). A tail deleted while it rested is seen all the same: its
    events are carried again, under new ids. (Polling is set far away: only saves wake
    the relay here.)"""
    checks = 0
    check_tail = resume.check_tail

    async def counted(*args: Any) -> None:
        nonlocal checks
        checks += 1
        await check_tail(*args)

    monkeypatch.setattr(relay_module, "check_tail", counted)
    place_orders(sales, 4, cancel_every=2, line=MUGS)
    relay = Relay(sales, nc, poll_interval=30, retry_delay=0.05)
    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop))
    try:
        await wait_for(lambda: relay.idle and relay.stats.stream_sequence == 7)
        reads = 0
        head = sales.recorder.max_notification_id

        def read_head() -> int | None:
            nonlocal reads
            reads += 1
            return head()

        monkeypatch.setattr(sales.recorder, "max_notification_id", read_head)
        for sequence in (10, 13):  # a customer, an order, its cancellation: three saves
            place_orders(sales, 1, cancel_every=2, line=MUGS)
            await wait_for(lambda at=sequence: relay.idle and relay.stats.stream_sequence == at)
        assert checks == 0
        # (PostgreSQL's NOTIFY of each save wakes the relay too, as any other process's.)
        assert reads == 0 or LogWatcher(sales.recorder, lambda: None).pushes

        js = nc.jetstream()
        for sequence in (12, 13):
            await js.delete_msg("sales", sequence)
        place_orders(sales, 1, cancel_every=2, line=MUGS)
        expected = public_positions(sales)

        async def carried() -> bool | None:
            positions = [orjson.loads(m.data)["logposition"] for m in await read_all(nc)]
            return positions == expected or None

        await eventually(carried)
        assert relay.stats.republished_from == expected[10]
        assert checks == 0
    finally:
        stop.set()
        await running


def test_the_outbox_reads_the_log_as_eventsourcing_does(sales: Sales) -> None:
    """On SQLite the outbox queries the events table itself; on any log it must give
    what eventsourcing's own query gives, page by page."""
    place_orders(sales, 40, note_every=3, line=MUGS)
    outbox = Outbox(sales)
    head = sales.recorder.max_notification_id() or 0
    for after, limit in ((0, 7), (5, 100), (head - 3, 10), (head, 10)):
        assert outbox._rows(after, head, limit) == outbox._notification_rows(after, head, limit)
    page = outbox.read(0, head, 1000)
    assert page.position == head
    assert [m.log_position for m in page.messages] == public_positions(sales)
    assert outbox.read(0, head, 5).position == public_positions(sales)[4]  # a full page ends
    # at its last row (private events are not read)


async def test_the_relay_writes_its_frames_to_the_socket_at_once_or_through_nats_py(
    sales: Sales, nc: Client, nats_server: EmbeddedServer
) -> None:
    """A run of frames goes straight to the socket when it took everything written so far
    (no turn of the event loop waits for nats-py's flusher), and through nats-py's buffer
    when the socket still holds bytes: the stream holds the same, in log order, either
    way."""
    place_orders(sales, 30, note_every=3, line=MUGS)
    through_nats_py = _count_relay_frames_through_nats_py(nc)
    await Relay(sales, nc, window=8, ack_every=3).run(until_head=True)
    assert through_nats_py == [0]  # every run of frames went to the socket at once
    direct = [(m.subject, m.headers, m.data) for m in await read_all(nc)]
    assert len(direct) == len(public_positions(sales))

    await nc.jetstream().delete_stream("sales")
    busy = await connect(nats_server.url)
    transport = busy._transport._io_writer.transport  # type: ignore[union-attr]
    transport.get_write_buffer_size = lambda: 1  # a socket that has not taken it all yet
    through_nats_py = _count_relay_frames_through_nats_py(busy)
    try:
        await Relay(sales, busy, window=8, ack_every=3).run(until_head=True)
    finally:
        await busy.close()
    assert through_nats_py[0] > 0
    assert [(m.subject, m.headers, m.data) for m in await read_all(nc)] == direct


def _count_relay_frames_through_nats_py(client: Client) -> list[int]:
    """A count, kept up to date, of the runs of relay frames ``client`` sends through
    nats-py's own buffer and flusher."""
    counted = [0]
    send_command = client._send_command

    async def counting(command: bytes, priority: bool = False) -> None:
        counted[0] += command.startswith(b"HPUB sales.")
        await send_command(command, priority)

    client._send_command = counting  # type: ignore[method-assign,assignment]
    return counted


async def test_a_request_s_command_wakes_the_relay_once_it_handed_back(
    sales: Sales, nc: Client
) -> None:
    """A command run for a request postpones the relay's wake until its thread handed
    back (the answer first), and a cancelled request's command still wakes it: the
    relay polls far away here, so only the wakes carry the orders."""
    from toolkit.http.consistency import run_command

    customer, _ = place_orders(sales, 1, line=MUGS)
    relay = Relay(sales, nc, poll_interval=30)
    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop))
    try:
        await wait_for(
            lambda: relay.idle and relay.stats.position == sales.recorder.max_notification_id()
        )
        for _ in range(3):
            await run_command(sales, sales.place_order, customer, [MUGS])
            await wait_for(
                lambda: relay.stats.position == sales.recorder.max_notification_id(), within=5
            )
        started = threading.Event()
        go_on = threading.Event()

        def slow_order() -> Any:
            started.set()
            go_on.wait(5)
            return sales.place_order(customer, [MUGS])

        request = asyncio.create_task(run_command(sales, slow_order))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
        request.cancel()  # (the client went away; the command goes on)
        with pytest.raises(asyncio.CancelledError):
            await request
        head = sales.recorder.max_notification_id()
        go_on.set()
        await wait_for(lambda: (sales.recorder.max_notification_id() or 0) > (head or 0), within=5)
        await wait_for(
            lambda: relay.stats.position == sales.recorder.max_notification_id(), within=5
        )
        assert public_positions(sales)[-1] == relay.stats.position
    finally:
        stop.set()
        await running


async def test_a_resting_relay_settles_acknowledgements_as_they_come_and_starts_over_without(
    sales: Sales, nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At rest the relay does not wait for its last acknowledgement: it settles when it
    comes (the stats say so, the relay resting), and one that never comes is overdue
    all the same: the relay starts over, and carries the log exactly once."""
    from toolkit.write import publishing

    place_orders(sales, 2, line=MUGS)
    relay = Relay(sales, nc, ack_timeout=0.5, poll_interval=30, retry_delay=0.05)
    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop))

    def relayed() -> bool:
        return relay.stats.position == sales.recorder.max_notification_id()

    try:
        await wait_for(lambda: relay.idle and relayed())
        place_orders(sales, 1, line=MUGS)
        await wait_for(lambda: relay.idle and relayed(), within=5)
        settle = publishing.AckWindow._settle
        monkeypatch.setattr(publishing.AckWindow, "_settle", lambda *_: None)  # lost
        place_orders(sales, 1, line=MUGS)
        await wait_for(lambda: relay.stats.restarts >= 1, within=5)
        monkeypatch.setattr(publishing.AckWindow, "_settle", settle)
        await wait_for(lambda: relay.idle and relayed(), within=5)
        assert [orjson.loads(m.data)["logposition"] for m in await read_all(nc)] == (
            public_positions(sales)
        )
    finally:
        stop.set()
        await running
