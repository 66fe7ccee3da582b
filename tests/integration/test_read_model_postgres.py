"""What is particular to PostgreSQL read models: generations are schemas, the pointer a
row, a dropped generation waits for its readers, and a projection says where its SQL runs.
(Checkpoints, dead letters, slices, replays and the read endpoints run over both
backends in their own tests.)"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path
from subprocess import PIPE
from typing import ClassVar

import httpx
import pytest
from nats.aio.client import Client

from contexts.system import system
from projections.billing import Accounts
from projections.shipping import Shipments
from tests.conftest import postgres, serving, wait_for
from tests.flow import home_of, project_all, relay_orders
from toolkit.config import Settings
from toolkit.errors import ConfigurationError
from toolkit.http.app import create_app
from toolkit.nats.embedded import EmbeddedServer
from toolkit.read.projector import Projector
from toolkit.read.replay import rebuild
from toolkit.read.store import ReadModelStore
from toolkit.readmodels import Dialect
from toolkit.readmodels.backends import open_home
from toolkit.readmodels.tables import dump

ON_POSTGRES = pytest.mark.parametrize("read_models", ["postgres"], indirect=True)


def items(page: httpx.Response) -> list[object]:
    """The items of a list endpoint's answer (a page of them, or a bare list)."""
    if page.status_code != 200:
        return []
    body = page.json()
    return list(body["items"] if isinstance(body, dict) else body)


@ON_POSTGRES
async def test_generations_are_schemas_and_the_pointer_a_row(
    nc: Client, data_dir: Path, read_models: Settings
) -> None:
    await relay_orders(data_dir, nc, 3)
    await project_all(Shipments(), read_models, nc)
    with home_of(read_models, "shipping") as home:
        first = home.current()
        assert first is not None and first.name == "shipping_g000001"
        with home.reader() as db:
            assert db is not None and db.dialect == Dialect.POSTGRESQL
            live = dump(db)
        result = await rebuild(Shipments(), home, nc, keep_previous=True)
        assert result.generation.name == "shipping_g000002" and first.exists()
        assert [g.name for g in home.generations()] == ["shipping_g000001", "shipping_g000002"]
        with home.reader() as db:
            assert db is not None and dump(db) == live
    url = read_models.read_model_url
    assert url is not None
    with postgres(url.rsplit("/", 1)[1], "PostgreSQL read models") as db:
        rows = db.execute("SELECT projection, current, building FROM toolkit.read_model")
        assert rows.fetchall() == [("shipping", "shipping_g000002", None)]


@ON_POSTGRES
async def test_a_dropped_generation_waits_for_its_readers(read_models: Settings) -> None:
    with home_of(read_models, "shipping") as home:
        first = home.live()
        ReadModelStore(first, Shipments()).close()
        second = home.new_generation()
        ReadModelStore(second, Shipments()).close()
        opened = home.open_reader()
        assert opened is not None and opened[0] == first
        reader = opened[1]
        home.switch_to(second)  # readers from now on use the second
        dropping = threading.Thread(target=home.drop, args=(first,))
        dropping.start()
        url = read_models.read_model_url
        assert url is not None
        with postgres(url.rsplit("/", 1)[1], "PostgreSQL read models") as admin:

            def waiting() -> bool:
                found = admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE 'LOCK TABLE%'"
                ).fetchone()
                return bool(found and found[0])

            await wait_for(waiting)  # the drop waits for the reader still on the first...
            assert reader.execute("SELECT count(*) FROM shipment").fetchone() == (0,)
            home.close_reader(reader)  # ...until it is done
            await wait_for(lambda: not dropping.is_alive())
        dropping.join()
        assert not first.exists()
        opened = home.open_reader()
        assert opened is not None and opened[0] == second
        home.close_reader(opened[1])


@ON_POSTGRES
async def test_a_projector_rides_out_its_database_dropping_every_connection(
    nc: Client, data_dir: Path, tmp_path: Path, read_models: Settings
) -> None:
    await relay_orders(data_dir, nc, 500)
    url = read_models.read_model_url
    assert url is not None
    with home_of(read_models, "billing") as home:
        store = ReadModelStore(home.live(), Accounts())
        projector = Projector(Accounts(), store, nc, batch_size=50, transaction_size=50)
        stop = asyncio.Event()
        running = asyncio.create_task(projector.run(stop, home=home))
        first = await nc.jetstream().stream_info("sales")
        await wait_for(lambda: projector.stats.checkpoints.get("sales") == first.state.last_seq)
        with home.reader() as db:  # a reader's connection, kept for the next reader
            assert db is not None
        with postgres("postgres", "PostgreSQL read models") as admin:  # as a restart would
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (url.rsplit("/", 1)[1],),
            )
        head = await relay_orders(data_dir, nc, 500)  # more, after the connections went
        await wait_for(lambda: projector.stats.checkpoints.get("sales") == head, within=30)
        stop.set()
        await running
        projector.store.close()
        assert projector.stats.retries >= 1  # the batch that met the dead connection
        with home.reader() as db:  # the kept one is gone: a new one
            assert db is not None
            faulted = dump(db)
    await project_all(Accounts(), tmp_path / "clean", nc)  # the same, in SQLite, unharmed
    with home_of(tmp_path / "clean", "billing") as clean, clean.reader() as db:
        assert db is not None
        assert faulted == dump(db)  # row by row, whichever database holds them


class SQLiteOnly(Shipments):
    dialects: ClassVar[Collection[str]] = ("sqlite",)  # type: ignore[assignment]


class LongName(Shipments):
    name: ClassVar[str] = "x" * 56


@ON_POSTGRES
def test_a_projection_says_which_backends_its_sql_runs_on(read_models: Settings) -> None:
    refused = pytest.raises(ConfigurationError, match="keeps its read model in sqlite, not post")
    with home_of(read_models, "shipping") as home, refused:
        ReadModelStore(home.live(), SQLiteOnly())
    with pytest.raises(ConfigurationError, match="too long for PostgreSQL schema names"):
        open_home(read_models, LongName.name)


@ON_POSTGRES
@pytest.mark.timeout(120)
async def test_readers_see_a_whole_postgresql_model_throughout_a_replay(
    nats_server: EmbeddedServer, nc: Client, data_dir: Path, read_models: Settings
) -> None:
    await relay_orders(data_dir, nc, 20_000)
    await project_all(Shipments(), read_models, nc)
    with home_of(read_models, "shipping") as home:
        before = home.current()
        with home.reader() as db:
            assert db is not None
            (first,) = db.execute("SELECT shipment_id FROM shipment LIMIT 1").fetchone()

    outcomes: list[tuple[int, str, int]] = []  # status, read model, shipments seen
    done = asyncio.Event()
    app = create_app(system, replace(read_models, nats_url=nats_server.url), relay=False)
    async with serving(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as http:

        async def reader() -> None:
            while not done.is_set():
                one = await http.get(f"/shipping/shipments/{first}")
                page = await http.get("/shipping/shipments", params={"limit": 500})
                for response, seen in ((one, 1), (page, len(items(page)))):
                    outcomes.append(
                        (response.status_code, response.headers.get("x-read-model", ""), seen)
                    )

        reading = asyncio.create_task(reader())
        await wait_for(lambda: len(outcomes) >= 20)
        url = read_models.read_model_url
        assert url is not None
        replay = await asyncio.create_subprocess_exec(  # the operator's replay
            sys.executable, "-m", "toolkit", "--data-dir", str(data_dir),
            "--nats-url", nats_server.url, "--read-model-url", url, "replay", "shipping",
            stderr=PIPE,
        )  # fmt: skip
        _, errors = await asyncio.wait_for(replay.communicate(), 100)
        assert replay.returncode == 0, errors.decode()
        during = len(outcomes)
        await wait_for(lambda: len(outcomes) >= during + 20)  # a few reads after the switch
        done.set()
        await reading
    with home_of(read_models, "shipping") as home:
        after = home.current()
    assert before is not None and after is not None and after != before
    assert not before.exists()
    assert {status for status, _, _ in outcomes} == {200}
    assert all(seen in (1, 500) for _, _, seen in outcomes)  # never empty, never partial
    generations = [model for _, model, _ in outcomes]
    assert generations[0] == "shipping/g000001" and generations[-1] == "shipping/g000002"
    switch = generations.index(generations[-1])
    assert set(generations[switch:]) == {generations[-1]}  # once switched, never back
