"""Faults on a three-server JetStream cluster (streams of three replicas): the stream
leader killed during a relay and during a catch-up, the whole cluster restarted mid-way,
a relay publishing what another relay stored. Each test prints what it injected and
what it verified."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import nats.errors
import orjson
import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from benchmarks.relay import fill_log
from contexts.sales import Sales
from projections.billing import Accounts
from tests.conftest import Report, wait_for
from tests.flow import MUGS, assert_stream_is_the_log, place_orders, public_positions, read_all
from toolkit import Relay, StreamSpec
from toolkit.nats.connection import connect
from toolkit.nats.embedded import EmbeddedCluster
from toolkit.read.projector import Projector
from toolkit.read.store import ReadModelStore
from toolkit.readmodels.sqlite import SQLiteHome
from toolkit.readmodels.tables import dump

pytestmark = pytest.mark.timeout(150)

R3 = StreamSpec("sales", replicas=3)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    """One cluster for the module (three servers electing a JetStream leader take about
    5 s to start); each test gets it whole again and without a stream (see ``cnc``)."""
    with EmbeddedCluster(tmp_path_factory.mktemp("cluster")) as servers:
        yield servers


@pytest.fixture
async def cnc(cluster: EmbeddedCluster) -> AsyncIterator[Client]:
    """A client of the cluster, once all three servers run (a test before may have
    stopped some), JetStream has a meta leader, and no stream is left from a test before."""
    cluster.start()  # those a test before killed or stopped
    client = await connect(cluster.url)
    js = client.jetstream()

    async def ready() -> bool:
        try:
            await js.account_info()
            with contextlib.suppress(NotFoundError):
                await js.delete_stream("sales")
            return (await js.account_info()).streams == 0
        except nats.errors.Error:
            return False

    deadline = asyncio.get_running_loop().time() + 30
    while not await ready():
        assert asyncio.get_running_loop().time() < deadline, "the cluster has no meta leader"
        await asyncio.sleep(0.1)
    yield client
    await client.close()


async def settled(
    nc: Client, within: float = 30, *, unless: Callable[[], bool] | None = None
) -> None:
    """Until the stream has a leader and every replica is current again: a server just
    restarted catches up first, and requests to the stream meanwhile may time out.
    ``unless()`` true (looked at once a second) gives up at once: a replica that never
    will be current."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    looked = loop.time()
    while True:
        if unless is not None and loop.time() - looked >= 1.0:
            looked = loop.time()
            assert not unless(), "the stream will not settle"
        try:
            await nc.jetstream().account_info()  # a meta leader, for consumers' creation
            info = await nc.jetstream().stream_info("sales")
            cluster = info.cluster
            replicas = (cluster.replicas or []) if cluster else []
            led = cluster is not None and bool(cluster.leader)
            if led and len(replicas) == 2 and all(p.current and not p.offline for p in replicas):
                return
        except nats.errors.Error:
            pass
        assert loop.time() < deadline, "the stream did not settle"
        await asyncio.sleep(0.1)  # JetStream has no event for a replica catching up


async def leader(nc: Client) -> str:
    info = await nc.jetstream().stream_info("sales")
    assert info.cluster is not None and info.cluster.leader
    return info.cluster.leader


async def test_the_relay_rides_out_the_stream_leader_killed(
    report: Report, cluster: EmbeddedCluster, cnc: Client, data_dir: Path
) -> None:
    sales = Sales(data_dir=data_dir)
    try:
        fill_log(sales, 6000)
        relay = Relay(sales, cnc, stream=R3, ack_timeout=2.0, retry_delay=0.1, max_retry_delay=1)
        relaying = asyncio.create_task(relay.run(until_head=True))
        await wait_for(lambda: relay.stats.published >= 1500 or relaying.done(), within=60)
        victim = await leader(cnc)
        at = relay.stats.published
        cluster.server(victim).kill()
        report(f"injected: SIGKILL of stream leader {victim} after {at:,} events were relayed")
        stats = await asyncio.wait_for(relaying, 90)
        cluster.server(victim).start()
        await assert_stream_is_the_log(cnc, sales)
        expected = len(public_positions(sales))
        report(
            f"verified: {stats.published:,} relayed ({stats.restarts} restarts), "
            f"{expected:,} public events in the stream in log order, 0 lost, 0 twice"
        )
        assert stats.published == expected
    finally:
        sales.close()


async def test_a_catch_up_rides_out_the_stream_leader_killed(
    report: Report, cluster: EmbeddedCluster, cnc: Client, data_dir: Path, tmp_path: Path
) -> None:
    sales = Sales(data_dir=data_dir)
    try:
        fill_log(sales, 5000)
        await Relay(sales, cnc, stream=R3).run(until_head=True)
    finally:
        sales.close()
    head = (await cnc.jetstream().stream_info("sales")).state.last_seq

    async def build(folder: Path, *, fault: bool) -> dict[str, list[tuple[object, ...]]]:
        home = SQLiteHome(folder, "billing")
        store = ReadModelStore(home.live(), Accounts())
        try:
            projector = Projector(Accounts(), store, cnc, batch_size=200, transaction_size=500)
            projecting = asyncio.create_task(projector.run(until_head=True))
            if fault:
                await wait_for(lambda: projector.stats.applied >= head // 3 or projecting.done())
                victim = await leader(cnc)
                at = store.checkpoint("sales")
                cluster.server(victim).kill()
                report(f"injected: SIGKILL of stream leader {victim} at checkpoint {at:,}")
            stats = await asyncio.wait_for(projecting, 90)
            if fault:
                cluster.server(victim).start()
                await settled(cnc)
            assert store.checkpoint("sales") == head
            report(f"{'faulted' if fault else 'clean'} build: {stats.applied:,} applied")
            return dump(store.db)
        finally:
            store.close()

    faulted = await build(tmp_path / "faulted", fault=True)
    clean = await build(tmp_path / "clean", fault=False)
    assert faulted == clean
    rows = sum(len(r) for name, r in faulted.items() if not name.startswith("toolkit_"))
    report(f"verified: read model equal row by row to a clean build ({rows:,} rows), at {head:,}")


async def test_relay_and_projection_ride_out_the_whole_cluster_restarted(
    report: Report, cluster: EmbeddedCluster, cnc: Client, data_dir: Path, tmp_path: Path
) -> None:
    sales = Sales(data_dir=data_dir)
    home = SQLiteHome(tmp_path / "models", "billing")
    store = ReadModelStore(home.live(), Accounts())
    stop = asyncio.Event()
    try:
        fill_log(sales, 3000)
        relay = Relay(sales, cnc, stream=R3, ack_timeout=2.0, retry_delay=0.2, max_retry_delay=1)
        projector = Projector(Accounts(), store, cnc, batch_size=200)
        relaying = asyncio.create_task(relay.run(stop))
        projecting = asyncio.create_task(projector.run(stop))
        await wait_for(lambda: store.checkpoint("sales") >= 500, within=60)
        cluster.stop()
        report(f"injected: all three servers stopped at checkpoint {store.checkpoint('sales'):,}")
        cluster.start()
        fill_log(sales, 500)  # commands go on meanwhile
        expected = len(public_positions(sales))
        await wait_for(lambda: store.checkpoint("sales") == expected, within=90)
        assert relay.stats.position == sales.recorder.max_notification_id()
        stop.set()
        await asyncio.gather(relaying, projecting)
        await assert_stream_is_the_log(cnc, sales)
        report(
            f"verified: {expected:,} public events relayed once each in log order, all "
            f"applied (checkpoint {store.checkpoint('sales'):,}); relay restarts "
            f"{relay.stats.restarts}"
        )
    finally:
        stop.set()
        store.close()
        sales.close()


def stale_start(relay: Relay, sequence: int, position: int) -> None:
    """Make the relay's first start read the stream as it was earlier (as when another
    relay publishes between its read and its first publish)."""
    real = relay.resume_position
    starts = iter([(sequence, position)])

    async def resume_position() -> tuple[int, int]:
        return next(starts, None) or await real()

    relay.resume_position = resume_position  # type: ignore[method-assign]


@pytest.mark.parametrize("seen", ["where it chains", "before where it chains"])
async def test_a_duplicate_of_what_another_relay_stored_is_not_a_loss(
    cnc: Client, data_dir: Path, seen: str
) -> None:
    """A relay that read the stream before another relay published more publishes what
    the other stored. A replicated stream checks message ids before the expected last
    sequence, so it answers with a duplicate acknowledgement: at the very sequence the
    relay chained it to (all is well: it goes on), or at another (it looks at that
    sequence, finds the message there and starts over). Either way nothing is published
    again under new ids, as it would be for a stream that lost messages."""
    sales = Sales(data_dir=data_dir)
    place_orders(sales, 20, note_every=3, line=MUGS)
    await Relay(sales, cnc, stream=R3).run(until_head=True)  # the other relay: 21 stored
    positions = public_positions(sales)
    place_orders(sales, 5, note_every=3, line=MUGS)
    relay = Relay(sales, cnc, stream=R3, ack_every=1)
    if seen == "where it chains":
        stale_start(relay, 10, positions[9])  # it publishes the 11th as the 11th
    else:
        stale_start(relay, 10, positions[8])  # it publishes the 10th as the 11th
    try:
        stats = await relay.run(until_head=True)
        assert stats.republished_from is None
        assert stats.restarts == (0 if seen == "where it chains" else 1)
        messages = await read_all(cnc)
        logged = [orjson.loads(m.data)["logposition"] for m in messages]
        assert logged == public_positions(sales)
        assert [m.headers["Nats-Msg-Id"] for m in messages] == [f"sales:{p}" for p in logged]
    finally:
        sales.close()
