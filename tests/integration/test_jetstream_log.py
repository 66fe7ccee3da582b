"""JetStream as the event log: eventsourcing's own recorder suites against
``toolkit.logs.jetstream``, and what they do not cover (atomic saves across aggregates,
racing writers, stale knowledge, live subscriptions, a lost server, the sales context
relayed from it). Every test has a nats-server of its own on a free loopback port."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID, uuid4

import orjson
import pytest
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    DataError,
    IntegrityError,
    OperationalError,
    ProcessRecorder,
    StoredEvent,
    Tracking,
    TrackingRecorder,
)
from eventsourcing.tests import application as suites_app
from eventsourcing.tests import persistence as suites
from eventsourcing.utils import Environment
from nats.aio.client import Client

from contexts.sales import Sales
from contexts.sales.domain import Order
from tests.conftest import nats_servers_using
from tests.flow import read_all, relay_all
from toolkit.errors import ConflictError
from toolkit.logs.jetstream import (
    BATCH_ID,
    BATCH_SEQUENCE,
    JetStreamAggregateRecorder,
    JetStreamApplicationRecorder,
    JetStreamDatastore,
    JetStreamFactory,
    JetStreamProcessRecorder,
    JetStreamTrackingRecorder,
    check_server_version,
)
from toolkit.nats.connection import connect
from toolkit.nats.embedded import EmbeddedServer

MODULE = "toolkit.logs.jetstream"


class OnJetStream:
    """A nats-server of its own for each test, and every factory made closed after it."""

    nats_url: str
    factories: list[JetStreamFactory]

    @pytest.fixture(autouse=True)
    def _server(self, nats_server: EmbeddedServer) -> Iterator[None]:
        self.nats_url = nats_server.url
        self.factories = []
        yield
        for factory in self.factories:
            factory.close()

    def make_factory(self, **env: str) -> JetStreamFactory:
        made = JetStreamFactory(Environment("test", {"NATS_URL": self.nats_url, **env}))
        self.factories.append(made)
        return made


# -- eventsourcing's own suites ------------------------------------------------------------
# (imported as modules: pytest would collect their base classes if imported by name)


class TestAggregateRecorder(OnJetStream, suites.AggregateRecorderTestCase):
    def create_recorder(self) -> AggregateRecorder:
        return self.make_factory().aggregate_recorder()


class TestSnapshotRecorder(OnJetStream, suites.AggregateRecorderTestCase):
    def create_recorder(self) -> AggregateRecorder:
        recorder = self.make_factory().aggregate_recorder("snapshots")
        assert isinstance(recorder, JetStreamAggregateRecorder)
        assert recorder.stream_name == "test_log_snapshots"
        return recorder


class TestApplicationRecorder(OnJetStream, suites.ApplicationRecorderTestCase[ApplicationRecorder]):
    def create_recorder(self) -> ApplicationRecorder:
        return self.make_factory().application_recorder()

    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()


class TestApplicationRecorderWithTextIds(TestApplicationRecorder):
    """Ids that are not UUIDs, with characters that must not change what a subject
    matches (``.``, ``*``, ``>``, spaces)."""

    def new_originator_id(self) -> str:
        return f"order.{uuid4()} *>"

    def create_recorder(self) -> ApplicationRecorder:
        return self.make_factory(ORIGINATOR_ID_TYPE="text").application_recorder()


class TestNonInterleavingNotificationIds(
    OnJetStream, suites.NonInterleavingNotificationIDsBaseCase
):
    def create_recorder(self) -> ApplicationRecorder:
        return self.make_factory().application_recorder()


class TestTrackingRecorder(OnJetStream, suites.TrackingRecorderTestCase):
    def create_recorder(self) -> TrackingRecorder:
        return self.make_factory().tracking_recorder()


class TestProcessRecorder(OnJetStream, suites.ProcessRecorderTestCase):
    def create_recorder(self) -> ProcessRecorder:
        return self.make_factory().process_recorder()


class TrackingRecorderSubclass(JetStreamTrackingRecorder):
    pass


class TestFactory(OnJetStream, suites.InfrastructureFactoryTestCase[JetStreamFactory]):
    @pytest.fixture(autouse=True)
    def _env(self, _server: None) -> None:
        self.env = Environment(
            "TestCase", {"PERSISTENCE_MODULE": MODULE, "NATS_URL": self.nats_url}
        )

    def expected_factory_class(self) -> type[JetStreamFactory]:
        return JetStreamFactory

    def expected_aggregate_recorder_class(self) -> type[AggregateRecorder]:
        return JetStreamAggregateRecorder

    def expected_application_recorder_class(self) -> type[ApplicationRecorder]:
        return JetStreamApplicationRecorder

    def expected_tracking_recorder_class(self) -> type[TrackingRecorder]:
        return JetStreamTrackingRecorder

    def tracking_recorder_subclass(self) -> type[TrackingRecorder]:
        return TrackingRecorderSubclass

    def expected_process_recorder_class(self) -> type[ProcessRecorder]:
        return JetStreamProcessRecorder


class TestExampleApplication(OnJetStream, suites_app.ExampleApplicationTestCase):
    """eventsourcing's example application (snapshots, the notification log) on
    JetStream, selected through the environment as a user would."""

    expected_factory_topic = "toolkit.logs.jetstream:JetStreamFactory"
    saved: ClassVar[dict[str, str | None]] = {}

    def setUp(self) -> None:
        for key, value in (("PERSISTENCE_MODULE", MODULE), ("NATS_URL", self.nats_url)):
            self.saved[key] = os.environ.get(key)
            os.environ[key] = value

    def tearDown(self) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# -- what the suites leave out -------------------------------------------------------------


def event(originator_id: UUID | str, version: int, topic: str = "topic") -> StoredEvent:
    return StoredEvent(originator_id, version, topic, f"state {version}".encode())


@pytest.fixture
def factory(nats_server: EmbeddedServer) -> Iterator[JetStreamFactory]:
    made = JetStreamFactory(Environment("sales", {"NATS_URL": nats_server.url}))
    yield made
    made.close()


@pytest.fixture
def log(factory: JetStreamFactory) -> JetStreamApplicationRecorder:
    recorder = factory.application_recorder()
    assert isinstance(recorder, JetStreamApplicationRecorder)
    return recorder


def test_a_save_across_aggregates_is_stored_whole_or_not_at_all(
    log: JetStreamApplicationRecorder,
) -> None:
    a, b, c = uuid4(), uuid4(), uuid4()
    assert log.insert_events([event(a, 1), event(b, 1), event(b, 2)]) == [1, 2, 3]
    with pytest.raises(IntegrityError):
        log.insert_events([event(c, 1), event(c, 2), event(a, 1)])  # a conflicts, last
    assert log.select_events(c) == []
    assert log.max_notification_id() == 3
    assert log.insert_events([event(c, 1), event(a, 2)]) == [4, 5]
    ids = [(n.originator_id, n.originator_version) for n in log.select_notifications(1, 10)]
    assert ids == [(a, 1), (b, 1), (b, 2), (c, 1), (a, 2)]


def test_racing_writers_of_one_aggregate_lose_nothing_and_apply_nothing_twice(
    factory: JetStreamFactory, nats_server: EmbeddedServer
) -> None:
    """Eight writers, each on its own connection, append to one aggregate by reading its
    last version and saving the next: every version is stored once, by one writer, and
    every refused save raised IntegrityError."""
    aggregate = uuid4()
    factories = [
        JetStreamFactory(Environment("sales", {"NATS_URL": nats_server.url})) for _ in range(8)
    ]
    won: list[list[int]] = [[] for _ in factories]
    conflicts = [0] * len(factories)
    start = threading.Barrier(len(factories))

    def write(number: int) -> None:
        recorder = factories[number].application_recorder()
        start.wait()
        while len(won[number]) < 10:
            last = recorder.select_events(aggregate, desc=True, limit=1)
            version = last[0].originator_version + 1 if last else 1
            try:
                recorder.insert_events([event(aggregate, version), event(aggregate, version + 1)])
            except IntegrityError:
                conflicts[number] += 1
            else:
                won[number] += [version, version + 1]

    threads = [threading.Thread(target=write, args=(n,)) for n in range(len(factories))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        for made in factories:
            made.close()
    versions = [
        e.originator_version for e in factory.application_recorder().select_events(aggregate)
    ]
    assert versions == list(range(1, 8 * 10 + 1))
    assert sorted(v for mine in won for v in mine) == versions
    assert sum(conflicts) > 0  # they did race


def test_stale_knowledge_of_an_aggregate_is_mended_not_trusted(
    factory: JetStreamFactory, nats_server: EmbeddedServer
) -> None:
    """A recorder that last saw version 1 of an aggregate that another process took to
    version 2 is refused version 2 (a conflict) and then accepts version 3."""
    mine = factory.application_recorder()
    aggregate = uuid4()
    mine.insert_events([event(aggregate, 1)])
    other_factory = JetStreamFactory(Environment("sales", {"NATS_URL": nats_server.url}))
    try:
        other_factory.application_recorder().insert_events([event(aggregate, 2)])
    finally:
        other_factory.close()
    with pytest.raises(IntegrityError):
        mine.insert_events([event(aggregate, 2)])
    assert mine.insert_events([event(aggregate, 3)]) == [3]
    assert [e.originator_version for e in mine.select_events(aggregate)] == [1, 2, 3]


def test_reads_of_one_aggregate_by_version(log: JetStreamApplicationRecorder) -> None:
    aggregate, other = uuid4(), uuid4()
    for first in range(1, 2501, 500):  # more events than one batched read returns
        versions = range(first, first + 500)
        log.insert_events([event(aggregate, v) for v in versions])
        log.insert_events([event(other, v) for v in versions])
    assert [e.originator_version for e in log.select_events(aggregate)] == list(range(1, 2501))
    assert [e.originator_version for e in log.select_events(aggregate, gt=2490)] == list(
        range(2491, 2501)
    )
    window = log.select_events(aggregate, gt=1000, lte=1003, desc=True)
    assert [e.originator_version for e in window] == [1003, 1002, 1001]
    assert [e.originator_version for e in log.select_events(aggregate, limit=2)] == [1, 2]
    assert log.select_events(aggregate, desc=True, limit=1)[0].state == b"state 2500"
    assert log.select_events(aggregate, gt=2500, desc=True, limit=1) == []


def test_notifications_by_topic_and_range(log: JetStreamApplicationRecorder) -> None:
    aggregate = uuid4()
    log.insert_events([event(aggregate, v, "even" if v % 2 == 0 else "odd") for v in range(1, 21)])
    evens = log.select_notifications(None, 5, topics=["even"])
    assert [n.id for n in evens] == [2, 4, 6, 8, 10]
    assert [n.id for n in log.select_notifications(10, 3, stop=15, topics=["odd"])] == [11, 13, 15]
    assert log.select_notifications(5, 10, stop=4) == []
    assert [n.id for n in log.select_notifications(18, 10, inclusive_of_start=False)] == [19, 20]


def test_tracking_records_stay_out_of_the_notifications(
    factory: JetStreamFactory,
) -> None:
    process = factory.process_recorder()
    aggregate = uuid4()
    ids = process.insert_events([event(aggregate, 1)], tracking=Tracking("upstream", 7))
    assert ids == [1]
    assert process.insert_events([event(aggregate, 2)]) == [3]  # 2 is the tracking record
    assert process.max_notification_id() == 3
    assert [n.id for n in process.select_notifications(None, 10)] == [1, 3]
    assert process.max_tracking_id("upstream") == 7
    with pytest.raises(IntegrityError):  # the same upstream event again: nothing stored
        process.insert_events([event(aggregate, 3)], tracking=Tracking("upstream", 7))
    assert process.max_notification_id() == 3


def test_subscription_follows_the_log_live_in_order(log: JetStreamApplicationRecorder) -> None:
    aggregate = uuid4()
    log.insert_events([event(aggregate, v, "a" if v % 3 else "b") for v in range(1, 4)])
    with log.subscribe(gt=1) as everything, log.subscribe(topics=["b"]) as only_b:
        assert [next(everything).id for _ in range(2)] == [2, 3]
        writer = threading.Thread(
            target=lambda: [
                log.insert_events([event(aggregate, v, "a" if v % 3 else "b")])
                for v in range(4, 301)
            ]
        )
        writer.start()
        seen = [next(everything) for _ in range(297)]
        writer.join()
        assert [n.id for n in seen] == list(range(4, 301))
        assert [n.originator_version for n in seen] == list(range(4, 301))
        assert [next(only_b).originator_version for _ in range(100)] == list(range(3, 301, 3))


def test_closing_the_factory_ends_a_waiting_subscription(nats_server: EmbeddedServer) -> None:
    made = JetStreamFactory(Environment("sales", {"NATS_URL": nats_server.url}))
    log = made.application_recorder()
    log.insert_events([event(uuid4(), 1)])
    seen: list[int] = []
    subscription = log.subscribe()

    def follow() -> None:
        seen.extend(n.id for n in subscription)  # blocks at the head until closed

    reader = threading.Thread(target=follow)
    reader.start()
    try:
        with subscription:
            while not seen:
                reader.join(0.01)
            made.close()
            reader.join(10)
            assert not reader.is_alive()
    finally:
        made.close()
    assert seen == [1]


async def test_a_stream_of_that_name_that_is_not_a_log_is_left_alone(
    nats_server: EmbeddedServer, nc: Client
) -> None:
    await nc.jetstream().add_stream(name="sales_log", subjects=["elsewhere.>"])
    made = JetStreamFactory(Environment("sales", {"NATS_URL": nats_server.url}))
    try:
        with pytest.raises(OperationalError, match="not an eventsourcing log"):
            await asyncio.to_thread(made.application_recorder)
    finally:
        made.close()
    info = await nc.jetstream().stream_info("sales_log")
    assert info.config.subjects == ["elsewhere.>"]


def test_a_larger_save_than_a_batch_is_refused_before_anything_is_sent(
    log: JetStreamApplicationRecorder,
) -> None:
    aggregate = uuid4()
    with pytest.raises(DataError, match="1001 messages"):
        log.insert_events([event(aggregate, v) for v in range(1, 1002)])
    with pytest.raises(DataError, match="line break"):
        log.insert_events([event(aggregate, 1, "two\nlines")])
    assert log.max_notification_id() is None


def test_a_save_without_a_server_raises_within_the_timeout(tmp_path: Path) -> None:
    with EmbeddedServer(tmp_path / "nats") as server:
        made = JetStreamFactory(
            Environment("sales", {"NATS_URL": server.url, "JETSTREAM_TIMEOUT": "0.5"})
        )
        try:
            recorder = made.application_recorder()
            recorder.insert_events([event(uuid4(), 1)])
            server.kill()
            with pytest.raises(OperationalError, match="may or may not have been stored"):
                recorder.insert_events([event(uuid4(), 1)])
            with pytest.raises(OperationalError):
                recorder.max_notification_id()
        finally:
            made.close()


def test_many_writers_saving_several_events_at_once_all_land(
    log: JetStreamApplicationRecorder,
) -> None:
    """64 writers saving three events at a time on one connection: every save lands
    whole, its events side by side, in order."""
    aggregates = [uuid4() for _ in range(64)]
    start = threading.Barrier(len(aggregates))
    failures: list[BaseException] = []

    def save(aggregate: UUID) -> None:
        start.wait()
        try:
            for version in range(1, 16, 3):
                log.insert_events([event(aggregate, version + i) for i in range(3)])
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=save, args=(a,)) for a in aggregates]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    notifications = log.select_notifications(None, 10_000)
    assert [n.id for n in notifications] == list(range(1, 64 * 15 + 1))
    for aggregate in aggregates:
        assert [e.originator_version for e in log.select_events(aggregate)] == list(range(1, 16))
    for first in range(0, len(notifications), 3):  # each save's three events side by side
        assert len({n.originator_id for n in notifications[first : first + 3]}) == 1


async def test_a_save_refused_for_too_many_batches_in_flight_is_sent_again(
    nats_server: EmbeddedServer, nc: Client
) -> None:
    """JetStream takes 50 open atomic batches per stream; with 50 left open by someone
    else, a save of two events is refused until the server abandons them (after 10 s),
    then sent again and stored."""
    made = JetStreamFactory(
        Environment("sales", {"NATS_URL": nats_server.url, "JETSTREAM_TIMEOUT": "30"})
    )
    try:
        log = made.application_recorder()
        assert isinstance(log, JetStreamApplicationRecorder)
        for number in range(50):
            headers = {BATCH_ID: f"left-open-{number}", BATCH_SEQUENCE: "1"}
            await nc.publish("sales_log.other", b"1 topic\n", headers=headers)
        await nc.flush()
        aggregate = uuid4()
        ids = await asyncio.to_thread(log.insert_events, [event(aggregate, 1), event(aggregate, 2)])
        assert ids == [1, 2]
        assert log.resent > 0
        assert [e.originator_version for e in log.select_events(aggregate)] == [1, 2]
    finally:
        made.close()


def test_the_factory_needs_a_url_and_a_recent_server() -> None:
    with pytest.raises(OSError, match="NATS_URL"):
        JetStreamFactory(Environment("sales", {}))
    with pytest.raises(OperationalError, match=r"2\.12 or newer"):
        check_server_version("2.11.4", "nats://127.0.0.1:4")
    check_server_version("2.12.0", "nats://127.0.0.1:4")


def test_no_answer_names_the_server_without_its_credentials(nats_server: EmbeddedServer) -> None:
    datastore = JetStreamDatastore(nats_server.url.replace("nats://", "nats://ann:secret@"))
    try:
        datastore.timeout = 0.01  # the call waits ten times as long for its coroutine
        with pytest.raises(OperationalError, match="no answer from the JetStream log") as raised:
            datastore.call(asyncio.sleep(5))
        assert "secret" not in str(raised.value) and "127.0.0.1" in str(raised.value)
    finally:
        datastore.close()


# -- the sales context on a JetStream log ------------------------------------------------


def jetstream_env(url: str) -> dict[str, str]:
    return {"PERSISTENCE_MODULE": MODULE, "NATS_URL": url}


def test_sales_on_jetstream_refuses_a_concurrent_change(
    nats_server: EmbeddedServer, data_dir: Path
) -> None:
    first = Sales(env=jetstream_env(nats_server.url), data_dir=data_dir)
    second = Sales(env=jetstream_env(nats_server.url), data_dir=data_dir)
    try:
        ann = first.register_customer("Ann", "ann@example.com")
        order = first.place_order(ann, [{"sku": "tea", "quantity": 1, "unit_price": "2.50"}])
        stale: Order = second.repository.get(order)
        first.cancel_order(order, "changed my mind")
        stale.cancel("by the second process")
        with pytest.raises(ConflictError):
            second.save(stale)
        assert first.repository.get(order).version == second.repository.get(order).version
        assert first.recorder.max_notification_id() == 3
        assert list(data_dir.iterdir()) == []  # no SQLite file: the log is the stream
    finally:
        first.close()
        second.close()


def envelope_shape(body: bytes) -> dict[str, Any]:
    envelope = orjson.loads(body)
    return {key: type(value).__name__ for key, value in envelope.items() if key != "data"} | {
        "data": sorted(envelope["data"])
    }


async def relayed(sales: Sales, nc: Client) -> list[tuple[str, list[str], dict[str, Any], int]]:
    """What the relay put on the public stream: the subject with its aggregate id
    replaced, header names, the envelope's shape, its log position."""
    await relay_all(sales, nc)
    shapes = []
    for message in await read_all(nc):
        parts = message.subject.split(".")
        parts[2] = "<id>"
        envelope = orjson.loads(message.data)
        shapes.append(
            (
                ".".join(parts),
                sorted(message.headers or {}),
                envelope_shape(message.data),
                envelope["logposition"],
            )
        )
    return shapes


def drive(sales: Sales) -> None:
    ann = sales.register_customer("Ann", "ann@example.com")
    for n in range(5):
        order = sales.place_order(ann, [{"sku": "tea", "quantity": n + 1, "unit_price": "1.25"}])
        if n % 2:
            sales.add_order_note(order, "gift wrap")  # private: never leaves sales
        if n == 3:
            sales.cancel_order(order, "too much tea")


async def test_the_public_stream_is_the_same_from_either_log(
    tmp_path: Path, data_dir: Path
) -> None:
    """The same commands on a SQLite log and on a JetStream log, each relayed onto its
    server's public ``sales`` stream: the messages cannot be told apart (subjects, headers,
    envelope shape, log positions), and the private log's stream is not the public one."""
    results = []
    for kind in ("sqlite", "jetstream"):
        with EmbeddedServer(tmp_path / kind) as server:
            env = jetstream_env(server.url) if kind == "jetstream" else {}
            sales = Sales(env=env, data_dir=data_dir / kind)
            nc = await connect(server.url)
            try:
                drive(sales)
                results.append(await relayed(sales, nc))
                names = sorted(str(i.config.name) for i in await nc.jetstream().streams_info())
                assert names == (["sales", "sales_log"] if kind == "jetstream" else ["sales"])
            finally:
                await nc.close()
                sales.close()
    sqlite, jetstream = results
    assert jetstream == sqlite
    assert len(sqlite) == 7  # a customer, five orders, one cancellation: notes stay private


def test_the_demo_runs_end_to_end_on_a_jetstream_log(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("NATS_URL", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "toolkit",
            "demo",
            "--log",
            "jetstream",
            "--orders",
            "200",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=100,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "the logs of sales, shipping and billing in JetStream" in " ".join(done.stdout.split())
    assert "no policy re-ran" in done.stdout
    assert "equal to the live model" in done.stdout
    assert "commands/s (JetStream log)" in done.stdout
    assert not nats_servers_using(tmp_path)
    assert list(tmp_path.iterdir()) == []
