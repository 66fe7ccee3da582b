"""Policies get the operations projections have (issue 20): a failing reaction parks its
aggregate (later messages of it are parked behind, not reacted to out of order), ``toolkit
dlq`` lists, shows, retries (each reaction stored once, however often retried) and drops
a policy's dead letters, ``toolkit status`` shows each policy's positions, lag and dead
letters, running or not, one lock keeps two reactors of a policy apart, and ``toolkit
serve --policies`` runs them in its process.

The contexts are test_policies' (shop publishes orders, depot packs and counts them); the
system below is what ``--system tests.integration.test_react_ops:system`` loads.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from tests.conftest import eventually, serving, wait_for
from tests.integration.test_policies import (  # noqa: F401 (depot_env: a fixture)
    Depot,
    OrderPlaced,
    Parcels,
    ParcelWanted,
    depot_env,
    open_depot,
    own_log,
)
from toolkit.cli import main
from toolkit.config import Settings
from toolkit.errors import PoisonMessage
from toolkit.nats.connection import connect
from toolkit.nats.embedded import EmbeddedServer
from toolkit.nats.streams import StreamSpec, ensure_stream
from toolkit.react.deadletters import PolicyDeadLetters, dead_letters_path
from toolkit.react.lock import policy_lock
from toolkit.react.retries import retry_dead_letters
from toolkit.react.runner import PolicyRunner, Retried
from toolkit.system import System
from toolkit.testing import relayed_event

pytestmark = pytest.mark.timeout(30)

BROKEN: set[str] = set()
"""Orders whose reaction fails (the bug), until a test mends it."""


class FlakyParcels(Parcels):
    """Parcels, failing on the orders of BROKEN, giving up after one quick retry."""

    retries = 1
    retry_delay = 0.01

    def react(self, fact: object, depot: Depot) -> None:
        if isinstance(fact, ParcelWanted) and fact.order_id in BROKEN:
            raise RuntimeError(f"cannot pack {fact.order_id}")
        super().react(fact, depot)


system = System(contexts={"depot": Depot}, policies={"parcels": FlakyParcels})


@pytest.fixture(autouse=True)
def mended() -> None:
    BROKEN.clear()


async def publish(url: str, *orders: tuple[int, str, str]) -> None:
    """shop's ``OrderPlaced`` (position, item, customer): each order an aggregate of the
    customer's (its subject's id token), as shop's relay publishes them."""
    nc = await connect(url)
    try:
        js = nc.jetstream()
        await ensure_stream(js, StreamSpec("shop"))
        for position, item, customer in orders:
            event = relayed_event(
                OrderPlaced(order_id=f"o{position}", item=item),
                position=position,
                aggregate_id=customer,
            )
            await js.publish(event.subject, event.body, headers=dict(event.headers))
    finally:
        await nc.close()


def toolkit(url: str, data_dir: Path, *args: str) -> int:
    return main(
        ["--nats-url", url, "--data-dir", str(data_dir), "--system", "tests.integration."
         "test_react_ops:system", *args]
    )  # fmt: skip


def packed(data_dir: Path) -> list[str]:
    """The orders depot packed, in its log's order."""
    depot = Depot(data_dir=data_dir)
    try:
        return [
            n.state.decode().split('"order_id":"')[1].split('"')[0]
            for n in depot.recorder.select_notifications(start=1, limit=10_000)
            if n.topic.endswith("Parcel.Packed")
        ]
    finally:
        depot.close()


def test_a_failing_reaction_parks_its_aggregate_and_dlq_retries_it_in_order_once(
    nats_server: EmbeddedServer, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = nats_server.url
    BROKEN.add("o2")
    asyncio.run(
        publish(url, (1, "tea", "ann"), (2, "jam", "bob"), (3, "tea", "cy"), (4, "tea", "bob"),
                (5, "", "dee"))
    )  # fmt: skip
    assert toolkit(url, data_dir, "react", "parcels", "--once") == 0
    err = capsys.readouterr().err
    assert "2 reacted (5 events), 0 skipped, 0 duplicates, 1 rejected, 1 parked, 1 held" in err
    assert packed(data_dir) == ["o1", "o3"]  # bob's o4 waits behind his o2

    # A later message of bob's, in another run: parked behind o2 too (kept in the file).
    asyncio.run(publish(url, (6, "rum", "bob"), (7, "rum", "eve")))
    assert toolkit(url, data_dir, "react", "parcels", "--once") == 0
    assert "1 reacted (3 events), 0 skipped, 0 duplicates, 0 rejected, 0 parked, 1 held" in (
        capsys.readouterr().err
    )

    assert toolkit(url, data_dir, "dlq", "list", "parcels", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["sequence"], r["kind"], r["type"], r["reason"]) for r in rows] == [
        (2, "parked", "shop.OrderPlaced", "RuntimeError: cannot pack o2 (failed 2 times)"),
        (4, "parked", "shop.OrderPlaced", "parked behind shop sequence 2"),
        (5, "rejected", "shop.OrderPlaced", "order o5 names no item"),
        (6, "parked", "shop.OrderPlaced", "parked behind shop sequence 2"),
    ]
    assert toolkit(url, data_dir, "dlq", "list", "parcels") == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[2] == "shop 5 shop.aggregate.dee.OrderPlaced rejected: order o5 names no item"
    assert toolkit(url, data_dir, "dlq", "show", "parcels", "--seq", "5") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["kind"] == "rejected" and '"order_id":"o5"' in shown["body"]

    # Not out of order, a rejection not at all, nothing while still broken.
    assert toolkit(url, data_dir, "dlq", "retry", "parcels", "--seq", "4") == 1
    assert "shop 4: still failing: still parked behind sequence 2" in capsys.readouterr().err
    assert toolkit(url, data_dir, "dlq", "retry", "parcels", "--seq", "5") == 1
    assert capsys.readouterr().err == (
        "toolkit: error: shop sequence 5 was rejected (order o5 names no item): a rejection "
        "is not retried, drop it\n"
    )
    assert toolkit(url, data_dir, "dlq", "retry", "parcels") == 1
    err = capsys.readouterr().err
    assert "retried 0 dead letters (0 events), 0 rejected now, 3 still failing" in err
    assert packed(data_dir) == ["o1", "o3", "o7"]

    # Mended: o2 is retried once by hand and the process dies before removing its dead
    # letter; dlq retry then stores nothing more of it, and bob's o4 and o6 follow in order.
    BROKEN.clear()
    depot = Depot(data_dir=data_dir)
    try:
        with PolicyDeadLetters(dead_letters_path(data_dir, "parcels")) as dead_letters:
            (o2,) = [d for d in dead_letters.letters() if d.sequence == 2]
        runner = PolicyRunner(FlakyParcels(), depot)
        assert runner.retry(o2.message()).outcome == "reacted"
        assert runner.retry(o2.message()).outcome == "before"  # its own tracking record
    finally:
        depot.close()
    assert toolkit(url, data_dir, "dlq", "retry", "parcels") == 0
    assert "retried 3 dead letters (4 events), 0 rejected now, 0 still failing" in (
        capsys.readouterr().err
    )
    assert packed(data_dir) == ["o1", "o3", "o7", "o2", "o4", "o6"]
    assert toolkit(url, data_dir, "dlq", "retry", "parcels") == 0  # nothing left: nothing
    capsys.readouterr()

    # bob's aggregate goes on: a new order of his is reacted to at once.
    asyncio.run(publish(url, (8, "tea", "bob")))
    assert toolkit(url, data_dir, "react", "parcels", "--once") == 0
    capsys.readouterr()
    assert packed(data_dir)[-1] == "o8"
    assert toolkit(url, data_dir, "dlq", "drop", "parcels", "--seq", "5") == 0
    assert capsys.readouterr().err.strip() == "dropped shop sequence 5"
    assert toolkit(url, data_dir, "dlq", "list", "parcels") == 0
    assert capsys.readouterr().err.strip() == "parcels has no dead letters"
    depot = Depot(data_dir=data_dir)
    try:
        assert depot.tally("tea") == 4 and depot.tally("jam") == 1 and depot.tally("rum") == 2
    finally:
        depot.close()


def test_a_message_parked_before_a_crash_is_not_reacted_to_again(data_dir: Path) -> None:
    """Parked (its dead letter written) but its tracking record not: when it comes again it
    is passed over, and so is a later one of its aggregate."""
    from tests.integration.test_policies import placed

    depot = Depot(data_dir=data_dir)
    try:
        with PolicyDeadLetters(dead_letters_path(data_dir, "parcels")) as dead_letters:
            first = placed(1, "tea", order_id="o1")
            dead_letters.park(first, "shop.OrderPlaced", "RuntimeError: boom (failed 4 times)")
            runner = PolicyRunner(FlakyParcels(), depot, holds=dead_letters)
            later = replace(placed(2, "jam", order_id="o2"), subject=first.subject)
            counts = runner.apply([first, later, placed(3, "rum", order_id="o3")])
            assert (counts.held, counts.reacted) == (2, 1)
            assert runner.position("shop") == 3
            assert [d.sequence for d in dead_letters.letters()] == [1, 2]
        assert len(own_log(depot)) == 3  # o3's parcel and tally only
    finally:
        depot.close()


@pytest.fixture
def any_depot(depot_env: dict[str, str], tmp_path: Path) -> Iterator[Depot]:  # noqa: F811
    """depot on each log: a SQLite file, PostgreSQL, the JetStream log."""
    context = open_depot(depot_env, tmp_path)
    yield context
    context.close()


def test_a_retry_is_stored_once_on_every_log(any_depot: Depot, tmp_path: Path) -> None:
    """Parked, retried, retried again (as after a crash before its dead letter was removed):
    its effects once, with a tracking record of its own; the policy's stays where it was."""
    from tests.integration.test_policies import placed, tracking

    depot = any_depot
    BROKEN.add("o1")
    with PolicyDeadLetters(tmp_path / "parcels.sqlite") as dead_letters:
        runner = PolicyRunner(FlakyParcels(), depot, holds=dead_letters)
        message = placed(1, "tea")
        with pytest.raises(PoisonMessage):
            runner.apply([message])
        dead_letters.park(message, "shop.OrderPlaced", "RuntimeError: cannot pack o1")
        assert runner.pass_over(message) and tracking(depot) == 1
        assert runner.apply([placed(2, "jam", order_id="o2")]).reacted == 1
        BROKEN.clear()
        assert runner.retry(message) == Retried("reacted", 3)
        assert runner.retry(message) == Retried("before")
        assert retry_dead_letters(runner, dead_letters).reacted == 1  # removes it only
        assert dead_letters.letters() == []
    assert depot.tally("tea") == 1 and tracking(depot) == 2
    assert len(own_log(depot)) == 6


def test_one_reactor_per_policy(
    nats_server: EmbeddedServer, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.integration.test_policies import placed

    depot = Depot(data_dir=data_dir)
    try:
        with PolicyDeadLetters(dead_letters_path(data_dir, "parcels")) as dead_letters:
            dead_letters.park(placed(1, "tea"), "shop.OrderPlaced", "RuntimeError: boom")
        with policy_lock(depot, "parcels", "toolkit react parcels"):
            assert toolkit(nats_server.url, data_dir, "react", "parcels", "--once") == 1
            err = capsys.readouterr().err
            assert err.startswith("toolkit: error: policy parcels already runs (toolkit react ")
            assert err.endswith(
                "a second one is refused: stop that one first (or start it with --standby)\n"
            )
            assert toolkit(nats_server.url, data_dir, "dlq", "retry", "parcels") == 1
            assert "policy parcels already runs" in capsys.readouterr().err
            assert toolkit(nats_server.url, data_dir, "dlq", "list", "parcels") == 0  # reads
            capsys.readouterr()
            assert main(["--data-dir", str(data_dir), "--nats-url", nats_server.url, "--system",
                         "tests.integration.test_react_ops:system", "serve", "--no-relay",
                         "--policies", "all", "--port", "0"]) == 1  # fmt: skip
            assert capsys.readouterr().err.endswith(
                "stop that one first (or serve without it in --policies)\n"
            )
    finally:
        depot.close()
    assert toolkit(nats_server.url, data_dir, "serve", "--policies", "nope") == 1
    assert capsys.readouterr().err == "toolkit: error: no policy named 'nope' (known: parcels)\n"


async def test_status_shows_each_policy_running_or_not(
    nats_server: EmbeddedServer, data_dir: Path
) -> None:
    from toolkit.cli.react import react as run_react
    from toolkit.ops.status import collect, render

    settings = replace(Settings.from_env(), data_dir=data_dir, nats_url=nats_server.url)
    nc = await connect(nats_server.url)
    try:
        report = await collect(system, settings, nc)  # nothing ran yet: no log, no stream
        assert report["policies"]["parcels"] == {
            "context": "depot", "state": "stopped", "processes": [], "dead_letters": 0,
            "dead_letter_kinds": {}, "streams": {"shop": {"position": 0, "lag_events": 0,
                                                          "lag_seconds": 0.0}},
        }  # fmt: skip
        BROKEN.add("o2")
        await publish(nats_server.url, (1, "tea", "a"), (2, "tea", "b"), (3, "", "c"))
        await run_react(settings, system, "parcels", once=True)  # toolkit react --once
        await publish(nats_server.url, (4, "tea", "d"), (5, "tea", "e"))

        report = await collect(system, settings, nc)
        parcels = report["policies"]["parcels"]
        assert parcels["state"] == "stopped"
        assert parcels["streams"]["shop"]["position"] == 3
        assert parcels["streams"]["shop"]["lag_events"] == 2
        assert parcels["streams"]["shop"]["lag_seconds"] >= 0
        assert (parcels["dead_letters"], parcels["dead_letter_kinds"]) == (
            2, {"parked": 1, "rejected": 1}
        )  # fmt: skip

        # Running (here, as 'toolkit react' runs it): its report makes it so.
        from toolkit.cli.react import watch
        from toolkit.ops.reports import Reporter
        from toolkit.react.reactor import Reactor

        depot = Depot(data_dir=data_dir)
        with PolicyDeadLetters(dead_letters_path(data_dir, "parcels")) as dead_letters:
            reactor = Reactor(PolicyRunner(FlakyParcels(), depot), dead_letters, nc)
            stop = asyncio.Event()
            async with Reporter(data_dir) as reporter:
                watch(reporter, reactor, lambda: None)
                running = asyncio.create_task(reactor.run(stop))
                await wait_for(lambda: reactor.stats.positions.get("shop") == 5)
                await wait_for(lambda: (data_dir / "run" / "policy.parcels.json").exists())
                report = await collect(system, settings, nc)
                stop.set()
                await running
        depot.close()
        parcels = report["policies"]["parcels"]
        assert parcels["state"] == "running" and len(parcels["processes"]) == 1
        assert parcels["streams"]["shop"] == {"position": 5, "lag_events": 0, "lag_seconds": 0.0}
        text = render(report)
        rows = list(zip(*(column.cells for column in text.columns), strict=True))
        assert ("policy parcels on depot", "running", "shop 5", "0 events, 0.0s",
                "1 parked, 1 rejected") in rows  # fmt: skip
    finally:
        await nc.close()


class SlicedParcels(FlakyParcels):
    slices = 4


class Recut(FlakyParcels):
    slices = 8


async def test_status_shows_a_sliced_policy_from_its_lowest_slice_and_its_workers(
    nats_server: EmbeddedServer, data_dir: Path
) -> None:
    """One row a stream, ``lowest..highest`` of the slices' records (a slice with none is
    where the whole policy was), the lag after the lowest, and who holds which slices."""
    from eventsourcing.persistence import ProcessRecorder, Tracking
    from rich.console import Console

    from toolkit.nats.connection import Connection
    from toolkit.ops.status import collect, render
    from toolkit.react.slices import policy_leases

    sliced = System(contexts={"depot": Depot}, policies={"parcels": SlicedParcels})
    settings = replace(Settings.from_env(), data_dir=data_dir, nats_url=nats_server.url)
    await publish(nats_server.url, *((n, "tea", f"c{n}") for n in range(1, 7)))
    depot = Depot(data_dir=data_dir)
    try:
        assert isinstance(depot.recorder, ProcessRecorder)
        records = {"parcels:shop": 2, "parcels:shop#slices": 4, "parcels:shop#0": 5,
                   "parcels:shop#1": 3, "parcels:shop#3": 6}  # fmt: skip
        for name, position in records.items():  # (slice 2: no record, at the whole's 2)
            depot.recorder.insert_tracking(Tracking(name, position))
    finally:
        depot.close()
    nc = await connect(nats_server.url)
    stop = asyncio.Event()
    groups = [policy_leases(Connection.of(nc), SlicedParcels(), ttl=3.0) for _ in range(2)]
    running = [asyncio.create_task(group.run(stop)) for group in groups]
    try:
        await wait_for(lambda: all(len(group.held) == 2 for group in groups), within=20)
        report = await collect(sliced, settings, nc)
        shares = {group.worker: sorted(group.held) for group in groups}
        stop.set()
        await asyncio.gather(*running)
        after = await collect(sliced, settings, nc)  # every lease given back
        problems = {}  # declared otherwise than it was cut: its workers would refuse
        for policy in (FlakyParcels, Recut):
            other = System(contexts={"depot": Depot}, policies={"parcels": policy})
            problems[policy.slices] = (await collect(other, settings, nc))["problems"]
    finally:
        stop.set()
        await asyncio.gather(*running, return_exceptions=True)
        await nc.close()
    parcels = report["policies"]["parcels"]
    shop = parcels["streams"]["shop"]
    assert (shop["position"], shop["slice_positions"], shop["lag_events"]) == (2, [5, 3, 2, 6], 4)
    assert shop["lag_seconds"] > 0
    held = parcels["slices"]["workers"]
    assert {w: sorted(h["slices"]) for w, h in held.items()} == shares
    assert parcels["slices"]["free"] == [] and parcels["slices"]["count"] == 4
    assert not report["problems"]
    assert after["policies"]["parcels"]["slices"] == {
        "count": 4,
        "workers": {},
        "free": [0, 1, 2, 3],
    }
    console = Console(width=200, record=True)
    console.print(render(report))
    text = console.export_text()
    assert "shop (4 slices) 2..6" in text and "4 events" in text
    assert text.count("holds 2 of 4 slices") == 2
    for worker in shares:
        assert f"policy parcels worker {worker}" in text
    assert problems == {
        None: ["policy parcels: was cut into 4 slices of shop, and cannot run as a whole: "
               "declare slices = 4 on it"],
        8: ["policy parcels: was cut into 4 slices of shop, and cannot run into 8: declare "
            "slices = 4 on it"],
    }  # fmt: skip


async def test_serve_runs_the_policies_it_is_asked_to(
    nats_server: EmbeddedServer, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """And readiness says so while a reaction fails (retried, here, without end)."""
    from toolkit.http.app import create_app

    monkeypatch.setattr(FlakyParcels, "retries", 10_000)
    settings = replace(Settings.from_env(), data_dir=data_dir, nats_url=nats_server.url)
    app = create_app(system, settings, relay=False, policies=["parcels"])
    await publish(nats_server.url, (1, "tea", "a"), (2, "jam", "b"))
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as http:
        await wait_for(lambda: packed(data_dir) == ["o1", "o2"])
        await wait_for(lambda: (data_dir / "run" / "policy.parcels.json").exists())
        ready = (await http.get("/health/ready")).json()
        assert ready == {"status": "ready"}, ready
        metrics = (await http.get("/metrics")).text
        assert 'toolkit_policy_position{policy="parcels",stream="shop"} 2.0' in metrics
        assert 'toolkit_policy_lag_events{policy="parcels",stream="shop"} 0.0' in metrics
        assert 'toolkit_policy_dead_letters{kind="parked",policy="parcels"} 0.0' in metrics

        BROKEN.add("o3")
        await publish(nats_server.url, (3, "tea", "c"))

        async def not_ready() -> list[str] | None:
            answer = await http.get("/health/ready")
            return answer.json()["reasons"] if answer.status_code == 503 else None

        reasons = await eventually(not_ready)
        assert reasons == [
            "policy parcels: policy parcels failed on shop at sequence 3: RuntimeError: "
            "cannot pack o3"
        ]
        BROKEN.clear()
        await wait_for(lambda: packed(data_dir) == ["o1", "o2", "o3"])
    assert not (data_dir / "run" / "policy.parcels.json").exists()  # gone with it
