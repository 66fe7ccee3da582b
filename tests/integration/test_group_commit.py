"""Group commit (``TOOLKIT_GROUP_COMMIT``, on by default) stores what saving one by one
would: the same saves refused, the same events in the same order, each save answered with
its own notification ids; a log failing inside a shared transaction loses no save and
reports none wrongly; on a SQLite and on a PostgreSQL log."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contexts.sales import Sales
from tests.flow import place_orders
from toolkit.errors import ConfigurationError, ConflictError
from toolkit.write.group_commit import GroupCommit

Save = list[tuple[int, int]]
"""A save: its events as (aggregate, version) pairs, aggregates numbered in the example."""

saves_strategy = st.lists(
    st.lists(st.tuples(st.integers(0, 2), st.integers(1, 3)), min_size=1, max_size=3),
    min_size=2,
    max_size=8,
)


@pytest.fixture
def sales(log_env: dict[str, str], data_dir: Path) -> Iterator[Sales]:
    context = Sales(env=log_env, data_dir=data_dir)
    yield context
    context.close()


def _hex(originator_id: object) -> str:
    """An id as the hex of its UUID, however the log gives it back (UUID, or its text)."""
    return str(originator_id).replace("-", "")


def _one_by_one(saves: list[Save]) -> tuple[list[bool], list[tuple[int, int]]]:
    """What saving one by one stores: whether each save is stored, and the log's events.
    A save is refused when one of its (aggregate, version) pairs is taken, by the log or
    by itself (the recorder's unique constraint)."""
    log: list[tuple[int, int]] = []
    stored = []
    for save in saves:
        fits = len(set(save)) == len(save) and not set(save) & set(log)
        stored.append(fits)
        if fits:
            log += save
    return stored, log


def _submit_in_order(grouped: GroupCommit, batches: list[list[StoredEvent]]) -> list[Any]:
    """Each batch inserted by a thread of its own, in order: the first is written alone
    while the others arrive, and they are then written as groups."""
    results: list[Any] = [None] * len(batches)

    def insert(n: int) -> None:
        try:
            results[n] = list(grouped(batches[n]) or [])
        except Exception as exc:  # a conflict (IntegrityError), or the log failing
            results[n] = exc

    threads = [threading.Thread(target=insert, args=(n,)) for n in range(len(batches))]
    for n, thread in enumerate(threads):
        thread.start()
        deadline = time.monotonic() + 10
        while len(grouped._pending) < n and time.monotonic() < deadline:
            time.sleep(0.001)  # (until this one waits behind the first: its arrival)
    return [threads, results]


def _held_first(insert: Callable[..., Any], gate: threading.Event) -> Callable[..., Any]:
    """``insert``, whose first call waits for ``gate``: the others queue meanwhile."""
    calls = 0

    def held(events: Sequence[StoredEvent], **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            assert gate.wait(10)
        return insert(events, **kwargs)

    return held


@pytest.mark.timeout(240)
@pytest.mark.parametrize("log_env", ["sqlite", "postgres"], indirect=True)
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(saves=saves_strategy, group_size=st.sampled_from([3, 5_000]))
def test_grouped_saves_store_and_refuse_what_one_by_one_would(
    sales: Sales, saves: list[Save], group_size: int
) -> None:
    ids = [uuid.uuid4() for _ in range(3)]  # new aggregates: examples share the log

    def stored_event(aggregate: int, version: int) -> StoredEvent:
        return StoredEvent(ids[aggregate], version, "tests.GroupCommitted", b"{}")

    batches = [[stored_event(*pair) for pair in save] for save in saves]
    gate = threading.Event()
    grouped = GroupCommit(_held_first(sales.recorder.insert_events, gate), max_events=group_size)
    threads, results = _submit_in_order(grouped, batches)
    gate.set()
    for thread in threads:
        thread.join(10)

    stored, log = _one_by_one(saves)
    assert [not isinstance(r, IntegrityError) for r in results] == stored
    ours = {i.hex: n for n, i in enumerate(ids)}  # (a log of text ids reads them as text)
    notifications = [
        n for n in sales.recorder.select_notifications(1, 10**6) if _hex(n.originator_id) in ours
    ]
    events = [(ours[_hex(n.originator_id)], n.originator_version) for n in notifications]
    assert events == log
    by_event = dict(zip(events, (n.id for n in notifications), strict=True))
    for save, result in zip(saves, results, strict=True):
        if not isinstance(result, IntegrityError):
            assert result == [by_event[pair] for pair in save]  # its own ids, in its order


@pytest.mark.timeout(120)
@pytest.mark.parametrize("log_env", ["sqlite", "postgres"], indirect=True)
def test_a_context_with_group_commit_takes_concurrent_commands(
    log_env: dict[str, str], data_dir: Path
) -> None:
    sales = Sales(env={**log_env, "TOOLKIT_GROUP_COMMIT": "on"}, data_dir=data_dir)
    try:
        grouped = sales.recorder.insert_events
        assert isinstance(grouped, GroupCommit)
        _, (first, *_) = place_orders(sales, 1)
        gate = threading.Event()  # the threads' first save held until others wait behind it
        grouped._insert = _held_first(grouped._insert, gate)

        def orders(_: int) -> None:
            place_orders(sales, 5)

        threads = [threading.Thread(target=orders, args=(n,)) for n in range(16)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while len(grouped._pending) < 3 and time.monotonic() < deadline:
            time.sleep(0.001)
        gate.set()
        for thread in threads:
            thread.join(60)
        assert grouped.groups >= 1  # commands' saves (tracking=None) were grouped
        notifications = sales.recorder.select_notifications(1, 10**6)
        assert [n.id for n in notifications] == sorted(n.id for n in notifications)
        assert len(notifications) == 2 + 16 * 6  # each thread: a customer and 5 orders

        # Two saves of one aggregate's next version: one is stored, the other refused.
        copies: list[Any] = [sales.repository.get(first) for _ in range(2)]
        outcomes: list[str] = []

        def cancel(order: Any) -> None:
            order.cancel("changed my mind")
            try:
                sales.save(order)
                outcomes.append("saved")
            except ConflictError:
                outcomes.append("conflict")

        racers = [threading.Thread(target=cancel, args=(copy,)) for copy in copies]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(30)
        assert sorted(outcomes) == ["conflict", "saved"]
    finally:
        sales.close()


def test_group_commit_takes_on_or_off_and_a_sqlite_or_postgresql_log(data_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match="TOOLKIT_GROUP_COMMIT must be on or off"):
        Sales(env={"TOOLKIT_GROUP_COMMIT": "yes please"}, data_dir=data_dir)
    default = Sales(data_dir=data_dir)
    try:
        assert isinstance(default.recorder.insert_events, GroupCommit)  # on by default
    finally:
        default.close()
    plain = Sales(env={"TOOLKIT_GROUP_COMMIT": "off"}, data_dir=data_dir)
    try:
        assert not isinstance(plain.recorder.insert_events, GroupCommit)
    finally:
        plain.close()
    popo = Sales(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, data_dir=data_dir)
    try:  # a log that cannot group: not grouped, unless asked for (then refused)
        assert not isinstance(popo.recorder.insert_events, GroupCommit)
    finally:
        popo.close()
    with pytest.raises(ConfigurationError, match="needs a SQLite or PostgreSQL log"):
        Sales(
            env={"PERSISTENCE_MODULE": "eventsourcing.popo", "TOOLKIT_GROUP_COMMIT": "on"},
            data_dir=data_dir,
        )


class _Fault(Exception):
    """A save failing inside its transaction, after some of its rows were written."""


def _faulty(
    recorder: Any, fault: Callable[[Sequence[StoredEvent], Any], None]
) -> Callable[[], None]:
    """Make ``recorder`` call ``fault(events, cursor)`` inside each insert's transaction,
    once its rows are written (before the commit); returns what undoes it."""
    name = (
        "_insert_stored_events" if hasattr(recorder, "_insert_stored_events") else "_insert_events"
    )
    inner = getattr(recorder, name)

    def inserting(cursor: Any, events: Sequence[StoredEvent], **kwargs: Any) -> Any:
        result = inner(cursor, events, **kwargs)
        fault(events, cursor)
        return result

    setattr(recorder, name, inserting)
    return lambda: delattr(recorder, name)


def _break(cursor: Any, why: str) -> None:
    """Fail the transaction ``cursor`` writes in, as the database would: on PostgreSQL a
    statement the server refuses (eventsourcing's recorder expects its errors from the
    server, which then rolls the transaction back), on SQLite an error raised in it."""
    if hasattr(cursor, "connection") and hasattr(cursor.connection, "info"):  # psycopg's
        cursor.execute("SELECT 1/0")  # (raised at the pipeline's sync, inside the transaction)
        return
    raise _Fault(why)


def _kill_connection(cursor: Any) -> None:
    """End the PostgreSQL session that ``cursor`` writes through (as a server restart or
    a dropped network would): its transaction is lost, and its statements fail."""
    from tests.conftest import postgres

    with postgres("test", "killing a log's connection") as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [cursor.connection.info.backend_pid])


FAULTS = ["group-once", "one-save", "log-away", "connection-killed"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("log_env", ["sqlite", "postgres"], indirect=True)
def test_a_save_failing_mid_group_loses_no_save_and_reports_none_wrongly(
    sales: Sales, log_env: dict[str, str], fault: str
) -> None:
    """Saves written together while the log fails inside the shared transaction: every
    caller is told either success, its events then in the log with the ids it was given,
    or an error, nothing of its save then in the log; no event is stored twice."""
    postgres = "PERSISTENCE_MODULE" in log_env
    if fault == "connection-killed" and not postgres:
        pytest.skip("a SQLite log has no connection to lose")
    saves = 6
    ids = [uuid.uuid4() for _ in range(saves)]
    batches = [
        [StoredEvent(ids[n], version, "tests.GroupCommitted", b"{}") for version in (1, 2)]
        for n in range(saves)
    ]
    doomed = ids[3]  # "one-save": every write holding this save's events fails
    faults = {"left": 1, "groups tried": 0}

    def fail(events: Sequence[StoredEvent], cursor: Any) -> None:
        grouped = len(events) > 2
        faults["groups tried"] += grouped
        if fault == "group-once" and grouped and faults["left"]:
            faults["left"] -= 1
            _break(cursor, "the disk said no, halfway through the group")
        if fault == "one-save" and any(e.originator_id == doomed for e in events):
            _break(cursor, "the disk said no to this save")
        if fault == "log-away":
            _break(cursor, "the log is away")
        if fault == "connection-killed" and grouped and faults["left"]:
            faults["left"] -= 1
            _kill_connection(cursor)

    undo = _faulty(sales.recorder, fail)
    gate = threading.Event()
    grouped = GroupCommit(_held_first(sales.recorder.insert_events, gate))
    try:
        threads, results = _submit_in_order(grouped, batches)
        gate.set()
        for thread in threads:
            thread.join(60)
    finally:
        undo()
    assert faults["groups tried"] >= 1  # the saves met in a shared transaction

    ours = {i.hex: n for n, i in enumerate(ids)}
    stored = {
        (ours[_hex(n.originator_id)], n.originator_version): n.id
        for n in sales.recorder.select_notifications(1, 10**6)
        if _hex(n.originator_id) in ours
    }
    notifications = sales.recorder.select_notifications(1, 10**6)
    assert sum(_hex(n.originator_id) in ours for n in notifications) == len(stored)  # none twice
    for n, result in enumerate(results):
        mine = {pair: i for pair, i in stored.items() if pair[0] == n}
        if isinstance(result, BaseException):
            assert not mine, f"save {n} was told {result!r}, yet its events are in the log"
        else:
            assert sorted(mine) == [(n, 1), (n, 2)], f"save {n} was told saved: {result}"
            assert result == [mine[(n, 1)], mine[(n, 2)]]  # the ids it was given
    succeeded = [not isinstance(r, BaseException) for r in results]
    expected = {
        "group-once": [True] * saves,  # written again one by one
        "one-save": [n != 3 for n in range(saves)],
        "log-away": [False] * saves,
        "connection-killed": [True] * saves,  # eventsourcing writes it again
    }
    assert succeeded == expected[fault]
