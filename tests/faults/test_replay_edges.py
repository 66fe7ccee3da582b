"""Replays at their edges (issue 16, #10 and #12): a replay from a later start builds a
partial model, kept beside the live one unless readers are told to switch, and its
progress counts what it replays; a replay killed at any step leaves a state from which
the next one finishes, with nothing left behind."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
from nats.aio.client import Client

from contexts.sales import Sales
from contexts.system import system
from projections.shipping import Shipments
from tests.conftest import BACKENDS, serving
from tests.flow import home_of, project_all, relay_all, relay_orders
from tests.systems import ShipmentsV2
from toolkit.config import Settings
from toolkit.errors import ConfigurationError, ProjectionError
from toolkit.http.app import create_app
from toolkit.ops.status import collect
from toolkit.read.projection import StartPosition
from toolkit.read.replay import rebuild
from toolkit.readmodels import Generation, ReadModelHome
from toolkit.readmodels.backends import connect
from toolkit.readmodels.sqlite import SQLiteHome
from toolkit.readmodels.tables import dump

Model = dict[str, list[tuple[Any, ...]]]


def model(generation: Generation) -> Model:
    db = connect(generation, readonly=True)
    try:
        return dump(db)
    finally:
        db.close()


@pytest.fixture
def sqlite_sales(data_dir: Path) -> Iterator[Sales]:
    """Sales with its log in a SQLite file (where the log is makes no difference here)."""
    app = Sales(data_dir=data_dir)
    yield app
    app.close()


async def ten_orders(sales: Sales, nc: Client) -> int:
    """A customer (sequence 1) and ten orders (sequences 2 to 11), relayed."""
    ann = sales.register_customer("Ann", "ann@example.com")
    for quantity in range(1, 11):
        sales.place_order(ann, [{"sku": "tea", "quantity": quantity, "unit_price": "1.00"}])
    return await relay_all(sales, nc)


@BACKENDS
async def test_a_partial_replay_is_kept_beside_the_live_model(
    sales: Sales, nc: Client, read_models: Settings
) -> None:
    assert await ten_orders(sales, nc) == 11
    await project_all(Shipments(), read_models, nc)
    with home_of(read_models, "shipping") as home:
        live = home.current()
        assert live is not None
        whole = model(live)

        kept = await rebuild(Shipments(), home, nc, starts_at=4)
        assert not kept.switched and not kept.dropped
        assert kept.partial_from == {"sales": 4}
        assert home.current() == live and model(live) == whole  # readers: the whole model
        assert len(model(kept.generation)["shipment"]) == 8  # orders at sequences 4 to 11
        assert [g.name for g in home.generations()] == [live.name, kept.generation.name]
        status = (await collect(system, read_models, nc))["projections"]["shipping"]
        assert status["generation"] == live.name and status["partial_from"] is None
        assert status["beside"] == [
            {
                "generation": kept.generation.name,
                "partial_from": {"sales": 4},
                "checkpoints": {"sales": 11},
            }
        ]

        switched = await rebuild(Shipments(), home, nc, starts_at=4, switch_partial=True)
        assert switched.switched and switched.partial_from == {"sales": 4}
        assert switched.previous == live and switched.dropped and not live.exists()
        assert home.current() == switched.generation
        status = (await collect(system, read_models, nc))["projections"]["shipping"]
        assert status["generation"] == switched.generation.name
        assert status["partial_from"] == {"sales": 4}
        assert [kept["generation"] for kept in status["beside"]] == [kept.generation.name]


async def test_progress_counts_the_events_a_partial_replay_applies(
    nc: Client, data_dir: Path
) -> None:
    head = await relay_orders(data_dir, nc, 3000)
    reports: list[tuple[int, int]] = []
    result = await rebuild(
        Shipments(),
        SQLiteHome(data_dir, "shipping"),
        nc,
        starts_at=1001,
        batch_size=50,
        progress=lambda done, total: reports.append((done, total)),
    )
    assert result.partial_from == {"sales": 1001}
    replayed = head - 1000
    assert reports and {total for _, total in reports} == {replayed}
    assert [done for done, _ in reports] == sorted(done for done, _ in reports)
    assert reports[-1] == (replayed, replayed)


async def test_a_start_past_the_head_is_refused_before_anything_changes(
    sqlite_sales: Sales, nc: Client, data_dir: Path
) -> None:
    await ten_orders(sqlite_sales, nc)
    await project_all(Shipments(), data_dir, nc)
    home = SQLiteHome(data_dir, "shipping")
    before = sorted(p.name for p in home.path.iterdir())
    with pytest.raises(ProjectionError) as past:  # it used to wait for the head for ever
        await asyncio.wait_for(rebuild(Shipments(), home, nc, starts_at=13), 20)
    assert str(past.value) == (
        "cannot replay shipping from sequence 13: stream sales ends at sequence 11 "
        "(nothing changed)"
    )
    with pytest.raises(ConfigurationError, match="the end is before the start"):
        await rebuild(Shipments(), home, nc, starts_at=8, to_sequence=5)
    assert sorted(p.name for p in home.path.iterdir()) == before
    # Right after the head: nothing yet, a partial model all the same.
    empty = await rebuild(Shipments(), home, nc, starts_at=12)
    assert empty.partial_from == {"sales": 12} and model(empty.generation)["shipment"] == []


class Killed(BaseException):
    """Stands for the process dying (SIGKILL) at that step: no error handler takes it."""


@contextlib.contextmanager
def dying(folder: Path, at: int | None, steps: list[str]) -> Iterator[None]:
    """Note in ``steps`` each change made in ``folder`` (a file opened for writing, just
    before and just after; a rename; a removal; a sync) and raise :class:`Killed` at
    step ``at``, as though the process died there. Files are closed as the kernel would
    close them."""
    real_io_open, real_os_open = io.open, os.open
    real_replace, real_unlink, real_fsync = os.replace, os.unlink, os.fsync
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def inside(path: object) -> bool:
        return isinstance(path, str | Path) and str(path).startswith(str(folder))

    def step(what: str) -> None:
        if at is not None and len(steps) > at:
            return  # dead already: what runs now is clean-up the kill would not run
        steps.append(what)
        if len(steps) - 1 == at:
            raise Killed(what)

    def opened(path: object, handle: Any, close: Callable[[], None]) -> Any:
        try:
            step(f"opened {Path(str(path)).name}")
        except Killed:
            close()
            raise
        return handle

    def io_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if not (inside(file) and set(mode) & set("wax+")):
            return real_io_open(file, mode, *args, **kwargs)
        step(f"open {Path(file).name} for writing")
        handle = real_io_open(file, mode, *args, **kwargs)
        return opened(file, handle, handle.close)

    def os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if not (inside(path) and flags & writing):
            return real_os_open(path, flags, *args, **kwargs)
        step(f"open {Path(path).name} for writing")
        fd = real_os_open(path, flags, *args, **kwargs)
        return int(opened(path, fd, lambda: os.close(fd)))

    def os_replace(source: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        if inside(target):
            step(f"rename {Path(source).name} to {Path(target).name}")
        real_replace(source, target, *args, **kwargs)

    def os_unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        if inside(path):
            step(f"remove {Path(path).name}")
        real_unlink(path, *args, **kwargs)

    def os_fsync(fd: Any) -> None:
        step("sync")
        real_fsync(fd)

    with contextlib.ExitStack() as patched:
        for module, name, fake in [
            (io, "open", io_open),
            (os, "open", os_open),
            (os, "replace", os_replace),
            (os, "rename", os_replace),
            (os, "unlink", os_unlink),
            (os, "fsync", os_fsync),
        ]:
            patched.enter_context(mock.patch.object(module, name, fake))
        yield


@pytest.mark.parametrize("start", ["beginning", 4], ids=["whole", "partial"])
async def test_a_replay_killed_at_any_step_leaves_a_state_the_next_one_finishes(
    start: StartPosition, sqlite_sales: Sales, nc: Client, tmp_path: Path, data_dir: Path
) -> None:
    await ten_orders(sqlite_sales, nc)
    await project_all(Shipments(), data_dir, nc)  # readers use g000001.sqlite
    template = data_dir / "projections"

    def fresh(name: str) -> SQLiteHome:
        shutil.copytree(template, tmp_path / name / "projections")
        return SQLiteHome(tmp_path / name, "shipping")

    home = fresh("undisturbed")
    steps: list[str] = []
    with dying(home.path, None, steps):
        undisturbed = await rebuild(Shipments(), home, nc, starts_at=start)
    expected = model(undisturbed.generation)
    whole = model(template / "shipping" / "g000001.sqlite")
    assert any("BUILDING" in step for step in steps), steps  # the marker is among them

    for at, what in enumerate(steps):
        home = fresh(f"killed-{at}")
        with dying(home.path, at, []), pytest.raises(Killed):
            await rebuild(Shipments(), home, nc, starts_at=start)
        home.close()
        home = SQLiteHome(home.path.parent.parent, "shipping")  # the next process
        try:
            result = await rebuild(Shipments(), home, nc, starts_at=start)
        except Exception as exc:
            raise AssertionError(f"killed at step {at} ({what}): {exc!r}") from exc
        current = home.current()
        assert current is not None and home.building() is None, what
        assert model(result.generation) == expected, what
        if start == "beginning":
            assert result.switched and current == result.generation, what
            assert [g.name for g in home.generations()] == [current.name], what
        else:  # kept beside the live model, which readers go on using
            assert not result.switched and result.partial_from == {"sales": 4}, what
            assert current.name == "g000001.sqlite" and model(current) == whole, what
            beside = [g for g in home.generations() if g != current]
            assert result.generation in beside, what
            # Killed once its model was whole (after its marker went): two kept alike.
            assert all(model(g) == expected for g in beside) and len(beside) <= 2, what
        home.close()


@pytest.mark.parametrize("read_models", ["sqlite", "postgres"], indirect=True)
async def test_a_replay_killed_around_each_change_of_its_home_is_finished_by_the_next(
    read_models: Settings, sqlite_sales: Sales, nc: Client
) -> None:
    await ten_orders(sqlite_sales, nc)
    await project_all(Shipments(), read_models, nc)
    with home_of(read_models, "shipping") as home:
        current = home.current()
        assert current is not None
        whole = model(current)
        changes = ["new_generation", "mark_building", "switch_to", "drop"]
        steps: list[str] = []
        with dying_in(home, changes, None, steps):
            await rebuild(Shipments(), home, nc)
        assert len(steps) == 10, steps  # before and after 5 calls
        for at, what in enumerate(steps):
            with dying_in(home, changes, at, []), pytest.raises(Killed):
                await rebuild(Shipments(), home, nc)
            result = await rebuild(Shipments(), home, nc)
            current = home.current()
            assert current == result.generation and home.building() is None, what
            assert [g.name for g in home.generations()] == [current.name], what
            assert model(current) == whole, what


@contextlib.contextmanager
def dying_in(
    home: ReadModelHome, methods: list[str], at: int | None, steps: list[str]
) -> Iterator[None]:
    """Note each call of the home's ``methods`` in ``steps`` (just before and just
    after) and raise :class:`Killed` at step ``at``."""

    def step(what: str) -> None:
        if at is not None and len(steps) > at:
            return
        steps.append(what)
        if len(steps) - 1 == at:
            raise Killed(what)

    def noted(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            step(f"before {name}")
            value = method(*args)
            step(f"after {name}")
            return value

        return call

    with contextlib.ExitStack() as patched:
        for name in methods:
            method = getattr(home, name)
            patched.enter_context(mock.patch.object(home, name, noted(name, method)))
        yield


async def test_an_interrupted_replay_is_resumed_only_by_the_same_request(
    sqlite_sales: Sales, nc: Client, data_dir: Path
) -> None:
    await ten_orders(sqlite_sales, nc)
    await project_all(Shipments(), data_dir, nc)
    home = SQLiteHome(data_dir, "shipping")
    # A whole replay killed just before it switches readers: built to the head.
    with dying_in(home, ["switch_to"], 0, []), pytest.raises(Killed):
        await rebuild(Shipments(), home, nc)
    assert home.building() is not None

    # A rewind to sequence 5 cannot go on from that one (it is past 5): it starts over.
    rewound = await rebuild(Shipments(), home, nc, to_sequence=5, exclusive=True)
    assert rewound.resumed_from is None and rewound.stats.checkpoints == {"sales": 5}
    assert len(model(rewound.generation)["shipment"]) == 4  # orders at sequences 2 to 5

    # A partial replay killed just before it is done; a whole one starts over.
    with dying_in(home, ["mark_building"], 2, []), pytest.raises(Killed):  # before clearing
        await rebuild(Shipments(), home, nc, starts_at=4)
    whole = await rebuild(Shipments(), home, nc)
    assert whole.resumed_from is None and whole.partial_from == {} and whole.switched
    assert len(model(whole.generation)["shipment"]) == 10
    assert [g.name for g in home.generations()] == [whole.generation.name]

    # A replay killed, then the code moves to version 2: its replay starts over.
    with dying_in(home, ["switch_to"], 0, []), pytest.raises(Killed):
        await rebuild(Shipments(), home, nc)
    v2 = await rebuild(ShipmentsV2(), home, nc)
    assert v2.resumed_from is None and v2.switched
    assert [g.name for g in home.generations()] == [v2.generation.name]
    assert len(model(v2.generation)["shipment"]) == 10


async def test_readers_are_told_when_the_current_marker_is_unreadable(
    sqlite_sales: Sales, nc: Client, data_dir: Path
) -> None:
    await ten_orders(sqlite_sales, nc)
    await project_all(Shipments(), data_dir, nc)
    current = data_dir / "projections" / "shipping" / "CURRENT"
    current.write_text("g0000")  # half a name
    app = create_app(system, Settings(data_dir=data_dir), relay=False)
    async with serving(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as http:
        broken = await http.get("/shipping/shipments")
        assert broken.status_code == 503, broken.text
        assert broken.json()["detail"] == (
            "projection shipping cannot tell which read model readers use ('toolkit status' "
            "says why)"
        )  # not "no read model yet": there is one
        current.write_text("g000001.sqlite\n")
        mended = await http.get("/shipping/shipments")
        assert mended.status_code == 200 and len(mended.json()["items"]) == 10


async def test_a_start_is_partial_only_when_it_leaves_events_out(
    sqlite_sales: Sales, nc: Client, data_dir: Path
) -> None:
    await ten_orders(sqlite_sales, nc)
    await project_all(Shipments(), data_dir, nc)
    home = SQLiteHome(data_dir, "shipping")
    fourth = (await nc.jetstream().get_msg("sales", seq=4)).time
    assert fourth is not None
    from_time = await rebuild(Shipments(), home, nc, starts_at=fourth)
    assert from_time.partial_from == {"sales": 4} and not from_time.switched
    assert len(model(from_time.generation)["shipment"]) == 8
    for whole in (1, fourth - timedelta(days=1)):  # from the first event: all of them
        result = await rebuild(Shipments(), home, nc, starts_at=whole)
        assert result.partial_from == {} and result.switched, whole
        assert len(model(result.generation)["shipment"]) == 10
