"""Fenced tracking records (:mod:`toolkit.logs.fence`) on each log: a save that moves
several tracking records, each only from where its writer last saw it, is stored whole
(its events and every move) or, when one move does not hold, not at all.

Through a real context that reacts, on SQLite, on PostgreSQL (a schema of its own) and on
the JetStream log (a nats-server of the test's own); "another worker" is a second context
on the same log, with its own recorder (on JetStream: its own knowledge of the subjects).
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import UUID

import pytest
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import IntegrityError, ProcessRecorder, ProgrammingError, Tracking

from tests.conftest import POSTGRES, postgres
from toolkit import BoundedContext
from toolkit.errors import ConflictError
from toolkit.logs.fence import FencedTracking, Move, fences

pytestmark = pytest.mark.timeout(60)


class Parcel(Aggregate):
    @event("Packed")
    def __init__(self, item: str) -> None:
        self.item = item


class Depot(BoundedContext[UUID]):
    name = "depot"
    reacts = True

    def pack(self, item: str) -> UUID:
        parcel = Parcel(item=item)
        self.save(parcel)
        return parcel.id


Open = Callable[[], Depot]


@pytest.fixture(params=["sqlite", "postgres", "jetstream"])
def open_depot(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Open]:
    """Opens depot on one log, as often as asked (each a worker of its own); all closed
    at the end."""
    env: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        if request.param == "postgres":
            schema = f"t_{uuid.uuid4().hex[:12]}"
            admin = stack.enter_context(postgres("test", "the postgres log"))
            admin.execute(f"CREATE SCHEMA {schema}")
            stack.callback(admin.execute, f"DROP SCHEMA {schema} CASCADE")
            env = {"PERSISTENCE_MODULE": "eventsourcing.postgres", **POSTGRES}
            env["POSTGRES_SCHEMA"] = schema
        elif request.param == "jetstream":
            server = request.getfixturevalue("nats_server")
            env = {"PERSISTENCE_MODULE": "toolkit.logs.jetstream", "NATS_URL": server.url}

        def make() -> Depot:
            context = Depot(env=env, data_dir=tmp_path / "data")
            stack.callback(context.close)  # (before the schema goes)
            return context

        yield make


@pytest.fixture
def depot(open_depot: Open) -> Depot:
    return open_depot()


def recorder(depot: Depot) -> ProcessRecorder:
    found = depot.recorder
    assert isinstance(found, ProcessRecorder)
    return found


def positions(depot: Depot, *names: str) -> list[int | None]:
    return [recorder(depot).max_tracking_id(name) for name in names]


def pack(depot: Depot, *moves: Move) -> UUID:
    with depot.processing(FencedTracking.of(moves)):
        return depot.pack("book")


def log(depot: Depot) -> list[tuple[UUID, int]]:
    return [
        (UUID(str(n.originator_id)), n.originator_version)
        for n in recorder(depot).select_notifications(start=1, limit=1000)
    ]


def refused(depot: Depot, *moves: Move) -> None:
    """The save with ``moves`` raises ConflictError, and leaves the log as it was."""
    before, tracked = log(depot), positions(depot, *(m.name for m in moves))
    with pytest.raises(ConflictError), depot.processing(FencedTracking.of(moves)):
        parcel = depot.pack("stale")
    with pytest.raises(AggregateNotFoundError):
        depot.repository.get(parcel)
    assert log(depot) == before
    assert positions(depot, *(m.name for m in moves)) == tracked


def test_the_log_of_a_context_that_reacts_fences(depot: Depot) -> None:
    assert fences(depot.recorder)


def test_moves_from_where_their_writer_left_them_are_stored_with_the_events(
    depot: Depot,
) -> None:
    first = pack(depot, Move("p:0", None, 5))
    assert depot.repository.get(first).item == "book"
    assert positions(depot, "p:0", "p:1") == [5, None]

    second = pack(depot, Move("p:0", 5, 9), Move("p:1", None, 7), Move("p:2", None, 3))
    third = pack(depot, Move("p:1", 7, 8), Move("p:2", 3, 4))
    assert positions(depot, "p:0", "p:1", "p:2") == [9, 8, 4]
    assert [aggregate for aggregate, _ in log(depot)] == [first, second, third]


def test_a_stale_move_refuses_the_whole_save(depot: Depot) -> None:
    pack(depot, Move("p:0", None, 5), Move("p:1", None, 7))
    refused(depot, Move("p:0", 4, 6))  # behind
    refused(depot, Move("p:0", 6, 8))  # ahead of what is there
    refused(depot, Move("p:0", 5, 6), Move("p:1", 6, 9))  # only the second is stale
    refused(depot, Move("p:0", None, 6))  # a record that is there, expected not to be
    refused(depot, Move("p:2", None, 1), Move("p:1", None, 8))
    refused(depot, Move("p:2", 1, 2))  # a record that is not there, expected
    assert positions(depot, "p:0", "p:1", "p:2") == [5, 7, None]
    pack(depot, Move("p:0", 5, 6), Move("p:1", 7, 9))  # (nothing moved meanwhile)
    assert positions(depot, "p:0", "p:1") == [6, 9]


def test_tracking_alone_is_fenced_too(depot: Depot) -> None:
    store = recorder(depot).insert_tracking
    store(FencedTracking.of([Move("p:0", None, 5), Move("p:1", None, 2)]))
    with pytest.raises(IntegrityError, match="p:1"):
        store(FencedTracking.of([Move("p:0", 5, 6), Move("p:1", 1, 3)]))
    with pytest.raises(IntegrityError, match="p:0"):
        store(FencedTracking.of([Move("p:0", None, 6)]))
    assert positions(depot, "p:0", "p:1") == [5, 2]
    store(FencedTracking.of([Move("p:0", 5, 6), Move("p:1", 2, 3)]))
    assert positions(depot, "p:0", "p:1") == [6, 3]
    assert log(depot) == []


def test_a_plain_tracking_record_moves_forward_as_before(depot: Depot) -> None:
    with depot.processing(Tracking("p:0", 5)):
        depot.pack("book")
    with pytest.raises(ConflictError), depot.processing(Tracking("p:0", 5)):
        depot.pack("again")
    with depot.processing(Tracking("p:0", 9)):  # (a plain record may skip ahead)
        depot.pack("book")
    assert positions(depot, "p:0") == [9]
    assert len(log(depot)) == 2


def test_what_another_worker_moved_is_where_the_fence_is(open_depot: Open) -> None:
    mine, theirs = open_depot(), open_depot()
    pack(mine, Move("p:0", None, 5))
    assert positions(theirs, "p:0") == [5]
    pack(theirs, Move("p:0", 5, 8))
    # mine last saw 5, and so did its recorder (on JetStream it remembers what it stored)
    with pytest.raises(ConflictError), mine.processing(FencedTracking.of([Move("p:0", 5, 7)])):
        stale = mine.pack("stale")
    pack(mine, Move("p:0", 8, 9))  # the record as it is, not as the recorder knew it
    with pytest.raises(AggregateNotFoundError):
        theirs.repository.get(stale)
    assert positions(theirs, "p:0") == [9]
    pack(theirs, Move("p:0", 9, 11))
    pack(mine, Move("p:0", 11, 12))  # (its recorder knew 9: not a reason to refuse)
    assert positions(theirs, "p:0") == [12]
    assert len(log(theirs)) == 5


def test_of_racing_workers_that_saw_the_same_position_one_moves_it(open_depot: Open) -> None:
    workers = [open_depot() for _ in range(4)]
    pack(workers[0], Move("p:0", None, 1))
    for worker in workers:
        assert positions(worker, "p:0") == [1]
    start = threading.Barrier(len(workers))
    outcomes: list[str] = []

    def race(number: int, worker: Depot) -> None:
        start.wait()
        try:
            pack(worker, Move("p:0", 1, 10 + number))
            outcomes.append(f"moved to {10 + number}")
        except ConflictError:
            outcomes.append("refused")

    threads = [threading.Thread(target=race, args=pair) for pair in enumerate(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (won,) = [outcome for outcome in outcomes if outcome != "refused"]
    assert positions(workers[0], "p:0") == [int(won.rsplit(" ", 1)[1])]
    assert len(log(workers[0])) == 2  # the first save's parcel, and the winner's


def test_a_log_with_a_row_per_position_refuses_fenced_records(tmp_path: Path) -> None:
    """eventsourcing's legacy multi-row tracking (``SINGLE_ROW_TRACKING=no``) keeps no one
    record to compare and set: a fenced tracking record is refused, not stored unfenced."""
    depot = Depot(env={"SINGLE_ROW_TRACKING": "no"}, data_dir=tmp_path)
    try:
        with (
            pytest.raises(ProgrammingError, match="single-row tracking"),
            depot.processing(FencedTracking.of([Move("p:0", None, 5)])),
        ):
            depot.pack("book")
        assert log(depot) == []
        assert positions(depot, "p:0") == [None]
    finally:
        depot.close()
