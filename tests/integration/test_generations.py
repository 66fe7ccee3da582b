"""``toolkit generations``: the generations a replay kept are listed, readers are switched
back to one atomically, and a live projector follows them from that generation's own
checkpoint; what cannot be used is refused with one line and nothing changed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from nats.aio.client import Client

from contexts.sales import Sales
from projections.shipping import Shipments
from tests.conftest import wait_for
from tests.flow import cli_args, home_of, project_all, relay_all, relay_orders
from toolkit.cli import main
from toolkit.config import Settings
from toolkit.read.projector import Projector
from toolkit.read.replay import rebuild
from toolkit.read.store import ReadModelStore
from toolkit.readmodels import Generation, tables
from toolkit.readmodels.backends import connect

BOTH = pytest.mark.parametrize("read_models", ["sqlite", "postgres"], indirect=True)
LINE = [{"sku": "tea", "quantity": 1, "unit_price": "1.00"}]


def toolkit(
    settings: Settings, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    """Run the CLI in this process (the command needs no NATS): exit code, stdout, stderr."""
    code = main([*cli_args(settings), *args])
    out, err = capsys.readouterr()
    return code, out, err


def shipments(generation: Generation) -> tuple[int, int]:
    """(rows of the shipment table, checkpoint of sales) in ``generation``."""
    db = connect(generation, readonly=True)
    try:
        (rows,) = db.execute("SELECT count(*) FROM shipment").fetchone()
        return int(rows), tables.checkpoint_of(db, "sales")
    finally:
        db.close()


async def kept_beside(settings: Settings, nc: Client) -> tuple[Generation, Generation]:
    """g000001 built by a projector after 3 orders, g000002 by a replay after 5, kept
    beside: readers use g000002."""
    await relay_orders(settings.data_dir, nc, 3)
    await project_all(Shipments(), settings, nc)
    await relay_orders(settings.data_dir, nc, 2)
    with home_of(settings, "shipping") as home:
        result = await rebuild(Shipments(), home, nc, keep_previous=True)
        assert result.previous is not None
        return result.previous, result.generation


@BOTH
async def test_kept_generations_are_listed_and_readers_switched_back(
    nc: Client, read_models: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = await kept_beside(read_models, nc)
    head = shipments(second)[1]

    code, out, err = toolkit(read_models, capsys, "generations", "shipping", "--json")
    assert code == 0, err
    listing = json.loads(out)
    assert listing["live"] == "g000002"
    one, two = listing["generations"]
    assert (one["generation"], one["state"], one["version"]) == ("g000001", "kept", 1)
    assert (two["generation"], two["state"], two["live"]) == ("g000002", "live", True)
    assert one["checkpoints"] == {"sales": shipments(first)[1]}
    assert one["checkpoints"]["sales"] < head
    assert two["checkpoints"] == {"sales": head}
    assert one["built"] is None and two["built"] is not None  # a projector built g000001
    assert two["replay_start"] == "beginning" and one["bytes"] > 0 and two["dead_letters"] == 0

    code, out, _ = toolkit(read_models, capsys, "generations", "shipping")
    assert code == 0
    assert "g000001" in out and "kept" in out and "live" in out and f"sales {head}" in out

    code, out, err = toolkit(read_models, capsys, "generations", "shipping", "--use", "g000001")
    assert code == 0, err
    assert out.startswith("shipping: readers moved from g000002 to g000001 (checkpoints sales ")
    assert "g000002 is kept" in out
    with home_of(read_models, "shipping") as home:
        current = home.current()
        assert current is not None and current.name == first.name
        assert [g.name for g in home.generations()] == [first.name, second.name]

    code, out, _ = toolkit(read_models, capsys, "generations", "shipping", "--use", "1")
    assert (code, out.strip()) == (0, "shipping: readers already use g000001; nothing changed")
    code, out, _ = toolkit(read_models, capsys, "generations", "shipping", "--use", "2", "--json")
    assert code == 0
    assert json.loads(out) == {
        "projection": "shipping",
        "generation": "g000002",
        "previous": "g000001",
        "switched": True,
        "checkpoints": {"sales": head},
    }


@BOTH
async def test_a_live_projector_follows_readers_back_from_that_generations_checkpoint(
    nc: Client, read_models: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = await kept_beside(read_models, nc)
    assert shipments(first) == (3, shipments(first)[1]) and shipments(second)[0] == 5
    with home_of(read_models, "shipping") as home, home.writer_lock():
        projector = Projector(Shipments(), ReadModelStore(home.live(), Shipments()), nc)
        stop = asyncio.Event()
        running = asyncio.create_task(projector.run(stop, home=home))
        try:
            await wait_for(lambda: projector.stats.checkpoints.get("sales") == shipments(second)[1])
            code, _, err = toolkit(read_models, capsys, "generations", "shipping", "--use", "1")
            assert code == 0, err
            # It notices within a poll (0.25 s); until then it may still write g000002,
            # which stays whole: its checkpoint and rows go together.
            await wait_for(lambda: projector.store.generation.name == first.name, within=5)
            sales = Sales(data_dir=read_models.data_dir)
            try:
                ann = sales.register_customer("Ann", "ann@example.com")
                sales.place_order(ann, LINE)
                head = await relay_all(sales, nc)
            finally:
                sales.close()
            # g000001 is caught up from its own checkpoint (3 orders) and goes on.
            await wait_for(lambda: shipments(first) == (6, head), within=20)
            assert shipments(second)[0] == 5  # the generation readers left is not written
        finally:
            stop.set()
            await running
            projector.store.close()


async def test_what_cannot_be_used_is_refused_with_nothing_changed(
    nc: Client, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(data_dir=data_dir)
    await kept_beside(settings, nc)
    with home_of(settings, "shipping") as home:
        partial = await rebuild(Shipments(), home, nc, starts_at=4)  # kept beside: g000003
        assert not partial.switched
        building = home.new_generation()  # g000004: a replay cut short
        ReadModelStore(building, Shipments()).close()
        home.mark_building(building)

    def refused(*args: str) -> str:
        code, out, err = toolkit(settings, capsys, *args)
        assert (code, out) == (1, ""), err
        assert len(err.strip().splitlines()) == 1
        with home_of(settings, "shipping") as home:
            current = home.current()
            assert current is not None and current.stem == "g000002"  # nothing changed
        return err.strip()

    assert refused("generations", "nowhere") == (
        "toolkit: error: no projection named 'nowhere' "
        "(known: billing, dispatches, invoices, shipping)"
    )
    assert refused("generations", "shipping", "--use", "g7") == (
        "toolkit: error: projection shipping has no generation 'g7' (there are: g000001, "
        "g000002, g000003, g000004)"
    )
    assert refused("generations", "shipping", "--use", "x").endswith("(there are: g000001, "
        "g000002, g000003, g000004)")  # fmt: skip
    assert "g000004 is being built by a replay that has not finished" in refused(
        "generations", "shipping", "--use", "4"
    )
    assert "g000003 is a partial model: it holds only the events of sales from sequence 4" in (
        refused("generations", "shipping", "--use", "3")
    )
    assert "built by version 1 of projection shipping but the code is version 2" in refused(
        "--system", "tests.systems:shipping_v2", "generations", "shipping", "--use", "1"
    )
    with home_of(settings, "shipping") as home, home.writer_lock("replay"):
        assert "a replay or rewind of projection shipping is running" in refused(
            "generations", "shipping", "--use", "1"
        )

    code, out, _ = toolkit(settings, capsys, "generations", "shipping", "--json")
    states = [(g["generation"], g["state"]) for g in json.loads(out)["generations"]]
    assert states == [
        ("g000001", "kept"), ("g000002", "live"), ("g000003", "kept"), ("g000004", "building")
    ]  # fmt: skip
    assert json.loads(out)["generations"][2]["partial_from"] == {"sales": 4}

    code, out, _ = toolkit(
        settings, capsys, "generations", "shipping", "--use", "3", "--switch-partial"
    )
    assert code == 0 and out.startswith("shipping: readers moved from g000002 to g000003")


def test_no_read_model_yet_is_an_empty_listing(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(data_dir=data_dir)
    code, out, _ = toolkit(settings, capsys, "generations", "billing")
    assert code == 0 and "billing has no read model yet" in out
    code, out, _ = toolkit(settings, capsys, "generations", "billing", "--json")
    assert json.loads(out) == {
        "projection": "billing", "live": None, "problem": None, "generations": []
    }  # fmt: skip
    code, _, err = toolkit(settings, capsys, "generations", "billing", "--use", "1")
    assert code == 1
    assert err.strip() == (
        "toolkit: error: projection billing has no generation '1' (there are: none yet)"
    )
