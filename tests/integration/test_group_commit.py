"""Group commit (``TOOLKIT_GROUP_COMMIT=on``) stores what saving one by one would: the
same saves refused, the same events in the same order, each save answered with its own
notification ids; on a SQLite and on a PostgreSQL log."""

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
        except IntegrityError as exc:
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
    plain = Sales(data_dir=data_dir)
    try:
        assert not isinstance(plain.recorder.insert_events, GroupCommit)  # off by default
    finally:
        plain.close()
