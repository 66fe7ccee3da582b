"""Policies: each foreign event causes its effects exactly once, whatever is delivered
again and whatever fails between the reaction and its record.

A tiny system of two contexts: ``shop`` publishes ``shop.OrderPlaced`` (built here as its
relay would publish it), and ``depot`` reacts to each order with two commands, packing a
parcel and counting the item on a tally, in one transaction with the tracking record.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from uuid import NAMESPACE_URL, UUID, uuid5

import pytest
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import OperationalError, ProcessRecorder
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.conftest import POSTGRES, postgres
from toolkit import BoundedContext, IntegrationEvent, PublishedLanguage, Translator, contract
from toolkit.errors import ConfigurationError, InvalidCommand, PoisonMessage
from toolkit.react import Policy, PolicyRunner, Rejection
from toolkit.read.reader import StreamMessage
from toolkit.testing import published_events, relayed_event
from toolkit.write.aggregate import TextAggregate

pytestmark = pytest.mark.timeout(60)

# -- the foreign contract, read through depot's own translator ---------------------------


@contract("shop.OrderPlaced", version=1)
class OrderPlaced(IntegrationEvent, frozen=True, kw_only=True):
    order_id: str
    item: str


@dataclass(frozen=True)
class ParcelWanted:  # depot's own language
    order_id: str
    item: str


shop = Translator("shop")


@shop.on(OrderPlaced)
def parcel_wanted(e: OrderPlaced) -> ParcelWanted:
    return ParcelWanted(order_id=e.order_id, item=e.item)


# -- depot: the context that reacts ---------------------------------------------------------


class Parcel(Aggregate):
    @staticmethod
    def create_id(order_id: str) -> UUID:
        return uuid5(NAMESPACE_URL, f"parcel/{order_id}")

    @event("Packed")
    def __init__(self, order_id: str, item: str) -> None:
        self.order_id = order_id
        self.item = item


class Tally(Aggregate):
    @staticmethod
    def create_id(item: str) -> UUID:
        return uuid5(NAMESPACE_URL, f"tally/{item}")

    @event("Opened")
    def __init__(self, item: str) -> None:
        self.item = item
        self.count = 0

    @event("Counted")
    def add(self) -> None:
        self.count += 1


@contract("depot.ParcelPacked", version=1)
class ParcelPacked(IntegrationEvent, frozen=True, kw_only=True):
    order_id: str


language = PublishedLanguage("depot")


@language.maps(Parcel.Packed, to=ParcelPacked)  # type: ignore[attr-defined]
def parcel_packed(e: Any) -> ParcelPacked:
    return ParcelPacked(order_id=e.order_id)


class Depot(BoundedContext[UUID]):
    name = "depot"
    published_language = language
    reacts = True

    def pack(self, order_id: str, item: str) -> UUID:
        if not item:
            raise InvalidCommand(f"order {order_id} names no item")
        parcel = Parcel(order_id=order_id, item=item)
        self.save(parcel)
        return parcel.id

    def count(self, item: str) -> None:
        if item == "boom":
            raise RuntimeError("the tally is broken")
        try:
            tally: Tally = self.repository.get(Tally.create_id(item))
        except Exception:
            tally = Tally(item=item)
        tally.add()
        self.save(tally)

    def tally(self, item: str) -> int:
        tally: Tally = self.repository.get(Tally.create_id(item))
        return tally.count


class Parcels(Policy[Depot]):
    """Pack a parcel for each order placed, and count its item: two commands, one
    transaction with the tracking record."""

    name = "parcels"
    translators = (shop,)

    def react(self, fact: object, depot: Depot) -> None:
        if isinstance(fact, ParcelWanted):
            depot.pack(fact.order_id, fact.item)
            depot.count(fact.item)


# -- helpers ---------------------------------------------------------------------------------


def placed(sequence: int, item: str, *, order_id: str | None = None) -> StreamMessage:
    """shop's ``OrderPlaced`` at stream (and log) ``sequence``, as shop's relay publishes it."""
    order_id = order_id or f"o{sequence}"
    published = relayed_event(
        OrderPlaced(order_id=order_id, item=item), position=sequence, aggregate_id=order_id
    )
    return published.message(sequence)


def unknown(sequence: int) -> StreamMessage:
    """An event type depot does not read."""
    published = relayed_event("shop.OrderCancelled", {"order_id": "x"}, position=sequence)
    return published.message(sequence)


def own_log(depot: Depot) -> list[tuple[str, UUID, int]]:
    """The context's log, as what it holds: (topic, aggregate, version) in log order
    (ids, timestamps and rowids left out: they differ from one run to another)."""
    return [
        (n.topic, UUID(str(n.originator_id)), n.originator_version)
        for n in depot.recorder.select_notifications(start=1, limit=10_000)
    ]


def tracking(depot: Depot) -> int | None:
    recorder = depot.recorder
    assert isinstance(recorder, ProcessRecorder)
    return recorder.max_tracking_id("parcels:shop")


# -- the logs: SQLite, PostgreSQL, JetStream ---------------------------------------------


@pytest.fixture(params=["sqlite", "postgres", "jetstream"])
def depot_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of depot's log: a SQLite file, a PostgreSQL schema of its own, or
    a JetStream log on a nats-server of the test's own."""
    if request.param == "sqlite":
        yield {}
    elif request.param == "postgres":
        schema = f"t_{uuid.uuid4().hex[:12]}"
        with postgres("test", "the postgres log") as admin:
            admin.execute(f"CREATE SCHEMA {schema}")
            try:
                yield {
                    "PERSISTENCE_MODULE": "eventsourcing.postgres",
                    **POSTGRES,
                    "POSTGRES_SCHEMA": schema,
                }
            finally:
                admin.execute(f"DROP SCHEMA {schema} CASCADE")
    else:
        server = request.getfixturevalue("nats_server")
        yield {"PERSISTENCE_MODULE": "toolkit.logs.jetstream", "NATS_URL": server.url}


def open_depot(env: dict[str, str], data_dir: Path) -> Depot:
    return Depot(env=dict(env), data_dir=data_dir)


@pytest.fixture
def depot(depot_env: dict[str, str], tmp_path: Path) -> Iterator[Depot]:
    context = open_depot(depot_env, tmp_path)
    yield context
    context.close()


# -- exactly once, on every log ---------------------------------------------------------


def test_each_event_causes_its_effects_once_however_often_delivered(
    depot: Depot, depot_env: dict[str, str], tmp_path: Path
) -> None:
    messages = [placed(1, "tea"), unknown(2), placed(3, "tea"), placed(4, "jam")]
    runner = PolicyRunner(Parcels(), depot)
    assert runner.position("shop") == 0

    counts = runner.apply(messages[:3])
    assert (counts.reacted, counts.skipped, counts.events) == (2, 1, 5)
    again = runner.apply(messages)  # overlapping: 1-3 again, then 4
    assert (again.duplicates, again.reacted, again.events) == (3, 1, 3)
    assert runner.apply(messages).duplicates == 4  # redelivered whole: nothing more

    assert depot.tally("tea") == 2 and depot.tally("jam") == 1
    assert len(own_log(depot)) == 8  # 3 parcels, 2 tallies opened, 3 counted
    assert tracking(depot) == 4 == runner.position("shop")

    # A restart (a new context and runner on the same log) goes on from the tracking.
    restarted = open_depot(depot_env, tmp_path)
    try:
        runner = PolicyRunner(Parcels(), restarted)
        assert runner.position("shop") == 4
        counts = runner.apply([*messages, placed(5, "tea")])
        assert (counts.duplicates, counts.reacted) == (4, 1)
        assert restarted.tally("tea") == 3
        assert tracking(restarted) == 5
    finally:
        restarted.close()


def test_events_of_a_reaction_that_fails_midway_are_not_stored(
    depot: Depot,
) -> None:
    """The second command of the reaction raises after the first saved: nothing of the
    message is stored, and it is processed again (and fails again) next time."""
    runner = PolicyRunner(Parcels(), depot)
    runner.apply([placed(1, "tea")])
    before = own_log(depot)

    for _ in range(2):
        with pytest.raises(PoisonMessage, match="shop at sequence 2: RuntimeError") as failed:
            runner.apply([placed(2, "boom"), placed(3, "tea")])
        assert failed.value.sequence == 2
        assert own_log(depot) == before
        assert tracking(depot) == 1 == runner.position("shop")


def test_passed_over_messages_are_tracked_when_a_later_one_fails(depot: Depot) -> None:
    runner = PolicyRunner(Parcels(), depot)
    with pytest.raises(PoisonMessage):
        runner.apply([unknown(1), unknown(2), placed(3, "boom")])
    assert tracking(depot) == 2  # the two unknown events are processed; 3 is not


def test_rejected_command_is_recorded_with_its_reason_and_the_policy_moves_on(
    depot: Depot,
) -> None:
    seen: list[Rejection] = []
    runner = PolicyRunner(Parcels(), depot, on_rejected=seen.append)
    counts = runner.apply([placed(1, ""), placed(2, "tea")])
    assert (counts.rejected, counts.reacted) == (1, 1)
    assert runner.rejected == seen
    [rejection] = seen
    assert (rejection.stream, rejection.sequence, rejection.type) == (
        "shop",
        1,
        "shop.OrderPlaced",
    )
    assert rejection.reason == "order o1 names no item"
    assert tracking(depot) == 2
    assert runner.apply([placed(1, ""), placed(2, "tea")]).duplicates == 2
    assert len(seen) == 1  # a rejected message is processed: not rejected twice


class Label(TextAggregate):
    """An aggregate with a text id: the order's own."""

    @event("Printed")
    def __init__(self, id: str) -> None:
        pass


class Labels(BoundedContext[UUID | str]):
    name = "labels"
    published_language = PublishedLanguage("labels")
    reacts = True

    def print_label(self, order_id: str) -> None:
        self.save(Label(id=order_id))


class Labelling(Policy[Labels]):
    name = "labelling"
    translators = (shop,)

    def react(self, fact: object, labels: Labels) -> None:
        if isinstance(fact, ParcelWanted):
            labels.print_label(fact.order_id)
            labels.save(Parcel(order_id=fact.order_id, item=fact.item))  # a UUID beside


def test_a_context_with_text_ids_reacts_on_every_log(
    depot_env: dict[str, str], tmp_path: Path
) -> None:
    labels = Labels(env=dict(depot_env), data_dir=tmp_path)
    try:
        runner = PolicyRunner(Labelling(), labels)
        messages = [placed(1, "tea", order_id="order 1/é"), placed(2, "jam")]
        assert runner.apply(messages).events == 4
        assert runner.apply(messages).duplicates == 2
        assert labels.repository.get("order 1/é").version == 1
        recorder = labels.recorder
        assert isinstance(recorder, ProcessRecorder)
        assert recorder.max_tracking_id("labelling:shop") == 2
    finally:
        labels.close()


# -- SQLite: the transaction, the relay, forged messages ------------------------------------


@pytest.fixture
def sqlite_depot(tmp_path: Path) -> Iterator[Depot]:
    context = open_depot({}, tmp_path)
    yield context
    context.close()


def test_no_events_without_their_tracking_record(
    sqlite_depot: Depot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tracking record is written after the events, in their transaction: when it
    fails, the events inserted before it are rolled back, and the message is processed
    again next time."""
    recorder: Any = sqlite_depot.recorder
    insert_tracking = type(recorder)._insert_tracking

    def failing(self: object, c: object, tracking: object) -> None:
        raise OperationalError("disk I/O error (injected)")

    monkeypatch.setattr(type(recorder), "_insert_tracking", failing)
    runner = PolicyRunner(Parcels(), sqlite_depot)
    with pytest.raises(PoisonMessage, match="disk I/O error"):
        runner.apply([placed(1, "tea")])
    assert own_log(sqlite_depot) == [] and tracking(sqlite_depot) is None

    monkeypatch.setattr(type(recorder), "_insert_tracking", insert_tracking)
    assert runner.apply([placed(1, "tea")]).reacted == 1
    assert len(own_log(sqlite_depot)) == 3 and tracking(sqlite_depot) == 1


def test_events_a_policy_causes_are_relayed(sqlite_depot: Depot) -> None:
    """Listeners hear of a reaction's events once they are stored (the in-process relay
    wakes this way), and the relay's outbox reads them from the process recorder."""
    heard: list[int] = []
    sqlite_depot.on_saved(lambda recordings: heard.append(len(recordings)))
    runner = PolicyRunner(Parcels(), sqlite_depot)
    with sqlite_depot.recordings() as recorded:
        runner.apply([placed(1, "tea"), placed(2, "")])
    assert heard == [3] and len(recorded) == 3  # the rejection stored no event
    [packed] = published_events(sqlite_depot)
    assert (packed.type, packed.data) == ("depot.ParcelPacked", {"order_id": "o1"})


class CountTwice(Policy[Depot]):
    name = "twice"
    translators = (shop,)

    def react(self, fact: object, depot: Depot) -> None:
        if isinstance(fact, ParcelWanted):
            depot.count(fact.item)  # opens the tally: stored only when the message is
            depot.count(fact.item)  # ... and finds it, as the first command left it


def test_a_reaction_sees_the_aggregates_it_saved_before(sqlite_depot: Depot) -> None:
    runner = PolicyRunner(CountTwice(), sqlite_depot)
    assert runner.apply([placed(1, "tea")]).events == 3  # opened, counted, counted
    assert sqlite_depot.tally("tea") == 2


def test_messages_the_relay_did_not_publish_cause_nothing(sqlite_depot: Depot) -> None:
    genuine = placed(1, "tea")
    forged = StreamMessage("shop", 1, genuine.subject, {}, genuine.data)  # no message id
    runner = PolicyRunner(Parcels(), sqlite_depot)
    counts = runner.apply([forged, placed(2, "jam")])
    assert (counts.rejected, counts.reacted) == (1, 1)
    assert "not published by the shop relay" in runner.rejected[0].reason
    assert [n[0].rpartition(".")[2] for n in own_log(sqlite_depot)][:1] == ["Packed"]


def test_a_context_that_does_not_react_is_refused(tmp_path: Path) -> None:
    class Plain(BoundedContext[UUID]):
        name = "plain"
        published_language = PublishedLanguage("plain")

    plain = Plain(data_dir=tmp_path)
    try:
        with pytest.raises(ConfigurationError, match="set reacts = True on Plain"):
            PolicyRunner(Parcels(), cast(Any, plain))
    finally:
        plain.close()


# -- any interleaving gives the log of each event processed once, in order -----------------

ITEMS = st.sampled_from(["tea", "jam", "", "boom"])


class Deliveries(RuleBasedStateMachine):
    """Shop publishes events; depot's runner is handed contiguous runs of the stream
    from any point at or before its position (redelivery, overlapping batches), is
    restarted on the same log file, and meets a reaction that fails (``boom``, retried
    until the tally is mended). At the end, its log is the log of a depot that processed
    each event once, in order; its tracking record is the last sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="policies-"))
        self.stream: list[StreamMessage] = []
        self.items: list[str] = []
        self.depot = open_depot({}, self.folder / "run")
        self.runner = PolicyRunner(Parcels(), self.depot)

    @rule(item=ITEMS, unread=st.booleans())
    def publish(self, item: str, unread: bool) -> None:
        sequence = len(self.stream) + 1
        self.stream.append(unknown(sequence) if unread else placed(sequence, item))
        self.items.append("" if unread else item)

    @precondition(lambda self: self.stream)
    @rule(back=st.integers(0, 5), length=st.integers(1, 6))
    def deliver(self, back: int, length: int) -> None:
        start = max(0, self.runner.position("shop") - back)  # 0-based index of the first
        try:
            self.runner.apply(self.stream[start : start + length])
        except PoisonMessage as failed:
            assert self.items[failed.sequence - 1] == "boom"
            assert self.runner.position("shop") == failed.sequence - 1

    @rule()
    def restart(self) -> None:
        self.depot.close()
        self.depot = open_depot({}, self.folder / "run")
        self.runner = PolicyRunner(Parcels(), self.depot)

    @invariant()
    def tracking_is_the_position(self) -> None:
        assert (tracking(self.depot) or 0) == self.runner.position("shop")

    def teardown(self) -> None:
        try:
            mended = [
                placed(m.sequence, "mended", order_id=f"o{m.sequence}") if item == "boom" else m
                for m, item in zip(self.stream, self.items, strict=True)
            ]
            self.runner.apply(mended)  # everything, once the tally is mended
            reference = open_depot({}, self.folder / "reference")
            try:
                PolicyRunner(Parcels(), reference).apply(mended)
                assert own_log(self.depot) == own_log(reference)
            finally:
                reference.close()
            assert (tracking(self.depot) or 0) == len(self.stream)
        finally:
            self.depot.close()
            shutil.rmtree(self.folder, ignore_errors=True)


TestDeliveries = Deliveries.TestCase
TestDeliveries.settings = settings(
    max_examples=30,
    stateful_step_count=25,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
