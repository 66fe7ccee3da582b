"""``toolkit react <policy>``: a policy follows a foreign stream over NATS, each event
causes its effects once, a run again causes nothing more, and a message whose reaction
keeps failing is parked as a dead letter while the later ones are processed.

The contexts are test_policies' (shop publishes orders, depot packs and counts them); the
system below is what ``--system tests.integration.test_react:system`` loads.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import ProcessRecorder, Recording

from tests.integration.test_policies import Depot, OrderPlaced, Parcels, own_log
from toolkit.cli import main
from toolkit.nats.connection import connect
from toolkit.nats.embedded import EmbeddedServer
from toolkit.nats.streams import StreamSpec, ensure_stream
from toolkit.react.deadletters import PolicyDeadLetters, dead_letters_path
from toolkit.react.reactor import Reactor
from toolkit.react.runner import PolicyRunner
from toolkit.system import System
from toolkit.testing import relayed_event

pytestmark = pytest.mark.timeout(30)


class QuickParcels(Parcels):
    """Parcels, giving up on a failing reaction after one quick retry."""

    retries = 1
    retry_delay = 0.01


system = System(contexts={"depot": Depot}, policies={"parcels": QuickParcels})
no_depot = System(policies={"parcels": QuickParcels})


async def publish(url: str, *orders: tuple[int, str]) -> None:
    """shop's ``OrderPlaced`` events at these log positions, as shop's relay publishes them."""
    nc = await connect(url)
    try:
        js = nc.jetstream()
        await ensure_stream(js, StreamSpec("shop"))
        for position, item in orders:
            event = relayed_event(
                OrderPlaced(order_id=f"o{position}", item=item),
                position=position,
                aggregate_id=f"o{position}",
            )
            await js.publish(event.subject, event.body, headers=dict(event.headers))
    finally:
        await nc.close()


def react(url: str, data_dir: Path, *args: str) -> int:
    return main(
        ["--nats-url", url, "--data-dir", str(data_dir), "--system", "tests.integration."
         "test_react:system", "react", *args]
    )  # fmt: skip


def tracking(depot: Depot) -> int | None:
    assert isinstance(depot.recorder, ProcessRecorder)
    return depot.recorder.max_tracking_id("parcels:shop")


def test_react_once_causes_each_effect_once_and_parks_what_keeps_failing(
    nats_server: EmbeddedServer, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(publish(nats_server.url, (1, "tea"), (2, "boom"), (3, ""), (4, "jam")))

    assert react(nats_server.url, data_dir, "parcels", "--once") == 0
    err = capsys.readouterr().err
    assert "reacting with parcels on context depot to shop" in err
    assert "parcels: 2 reacted (6 events), 0 skipped, 0 duplicates, 1 rejected, 1 parked" in err
    assert "positions {'shop': 4}" in err

    depot = Depot(data_dir=data_dir)
    try:
        assert depot.tally("tea") == 1 and depot.tally("jam") == 1
        log = own_log(depot)
        assert len(log) == 6 and tracking(depot) == 4  # nothing of o2 (boom) nor o3 ("")
    finally:
        depot.close()
    with PolicyDeadLetters(dead_letters_path(data_dir, "parcels")) as dead_letters:
        letters = dead_letters.letters()
    assert [(d.stream, d.sequence, d.kind, d.type) for d in letters] == [
        ("shop", 2, "parked", "shop.OrderPlaced"),
        ("shop", 3, "rejected", "shop.OrderPlaced"),
    ]
    assert letters[0].reason == "RuntimeError: the tally is broken (failed 2 times)"
    assert letters[0].body and "o2" in letters[0].body.decode()
    assert letters[1].reason == "order o3 names no item"

    # Run again, with one new order: only that one causes anything.
    asyncio.run(publish(nats_server.url, (5, "tea")))
    assert react(nats_server.url, data_dir, "parcels", "--once") == 0
    assert "parcels: 1 reacted (2 events)" in capsys.readouterr().err
    assert react(nats_server.url, data_dir, "parcels", "--once") == 0
    assert "parcels: 0 reacted (0 events)" in capsys.readouterr().err
    depot = Depot(data_dir=data_dir)
    try:
        assert depot.tally("tea") == 2 and len(own_log(depot)) == 8 and tracking(depot) == 5
    finally:
        depot.close()


async def test_a_reactor_follows_its_stream_until_stopped(
    nats_server: EmbeddedServer, data_dir: Path
) -> None:
    """Started before the stream exists, it waits for it, then reacts to what comes."""
    depot = Depot(data_dir=data_dir)
    nc = await connect(nats_server.url)
    try:
        with PolicyDeadLetters(dead_letters_path(data_dir, "parcels")) as dead_letters:
            reactor = Reactor(PolicyRunner(QuickParcels(), depot), dead_letters, nc)
            stop, reacted = asyncio.Event(), asyncio.Event()
            saved: list[object] = []  # every event stored (two orders' may be one save)

            def heard(recordings: list[Recording[Any]]) -> None:
                saved.extend(recordings)
                reacted.set()

            depot.on_saved(heard)
            running = asyncio.create_task(reactor.run(stop))
            await publish(nats_server.url, (1, "tea"), (2, "tea"))
            async with asyncio.timeout(10):
                while len(saved) < 5:  # two parcels, and the tallies of three saves
                    reacted.clear()
                    await reacted.wait()
            stop.set()
            stats = await running
        assert (stats.reacted, stats.events) == (2, 5)
        assert depot.tally("tea") == 2
    finally:
        await nc.close()
        depot.close()


def test_react_help_and_unknown_names_are_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["react", "--help"])
    assert done.value.code == 0
    assert "--once" in capsys.readouterr().out

    args = ["--nats-url", "nats://127.0.0.1:1", "--data-dir", str(tmp_path), "--system"]
    assert main([*args, "tests.integration.test_react:system", "react", "nope"]) == 1
    err = capsys.readouterr().err
    assert err == "toolkit: error: no policy named 'nope' (known: parcels)\n"

    assert main([*args, "tests.integration.test_react:no_depot", "react", "parcels"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "toolkit: error: policy parcels runs on context 'depot', which the system does "
        "not declare (known: none)\n"
    )
