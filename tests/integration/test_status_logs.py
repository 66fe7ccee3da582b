"""``toolkit status`` reports a relay's lag whichever log the context keeps: a SQLite
file, PostgreSQL (eventsourcing's module, with :mod:`toolkit.logs.postgres`'s recorder
since sales keeps text ids; a fresh schema of the local server's ``test`` database,
skipped without one except under CI=true) or the JetStream log. Status builds
the context from the process's environment, as ``toolkit relay`` does, and asks the
context's own recorder for the log's head; it creates no table, stream or file that the
log has not made yet. (Before issue 17 it read SQLite logs only: the relay of any other
log had no lag at all.)"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError
from rich.console import Console

from contexts.sales import Sales
from contexts.system import system as example
from tests.conftest import postgres
from tests.flow import place_orders, public_positions
from toolkit import Relay
from toolkit.config import Settings
from toolkit.nats.embedded import EmbeddedServer
from toolkit.ops.status import collect, render

LINE = {"sku": "tea", "quantity": 1, "unit_price": "1.00"}
system = replace(example, contexts={"sales": Sales}, policies={})
"""The example with sales alone: shipping's and billing's logs, which these tests never
make, would be problems of their own (status creates no log), and so would the policies."""


@pytest.fixture
def sql_log(log_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """conftest's SQLite or PostgreSQL log, selected through the process's environment,
    where status (like the relay) finds it."""
    for key, value in log_env.items():
        monkeypatch.setenv(key, value)
    return log_env


@pytest.fixture
def jetstream_log(nats_server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The JetStream log on the test's server, selected through the environment."""
    monkeypatch.setenv("PERSISTENCE_MODULE", "toolkit.logs.jetstream")
    monkeypatch.setenv("NATS_URL", nats_server.url)


async def _relay_of(settings: Settings, nc: Client) -> dict[str, Any]:
    report = await collect(system, settings, nc)
    relay: dict[str, Any] = report["contexts"]["sales"]
    return relay


async def _lag_is_reported(data_dir: Path, nc: Client, nats_server: EmbeddedServer) -> None:
    settings = Settings(nats_url=nats_server.url, data_dir=data_dir)
    sales = Sales(data_dir=data_dir)  # from the environment, as status builds it
    try:
        place_orders(sales, 2, note_every=1)  # a customer, 2 orders, 2 private notes
        relay = await _relay_of(settings, nc)
        head = sales.recorder.max_notification_id()
        assert (relay["log_head"], relay["relayed_to"], relay["relay_lag"]) == (head, 0, 3)
        assert "problems" not in relay

        await Relay(sales, nc).run(until_head=True)
        relayed_to = public_positions(sales)[-1]  # that of the relay's last message
        order = sales.place_order(sales.register_customer("B", "b@x.org"), [LINE])
        sales.add_order_note(order, "private")  # the log ends in a private event
        relay = await _relay_of(settings, nc)
        head = sales.recorder.max_notification_id()
        assert (relay["log_head"], relay["relayed_to"], relay["relay_lag"]) == (
            head,
            relayed_to,
            2,  # the customer and the order; not the note
        )
        await Relay(sales, nc).run(until_head=True)
        report = await collect(system, settings, nc)
        relay = report["contexts"]["sales"]
        assert relay["relay_lag"] == 0 and relay["log_head"] > relay["relayed_to"]
        assert report["problems"] == []
        console = Console(width=200, record=True)
        console.print(render(report))
        assert f"log {relay['log_head']}, relayed {relay['relayed_to']}" in console.export_text()
    finally:
        sales.close()


async def test_status_reports_the_relay_lag_of_a_sql_log(
    sql_log: dict[str, str], data_dir: Path, nc: Client, nats_server: EmbeddedServer
) -> None:
    await _lag_is_reported(data_dir, nc, nats_server)


@pytest.mark.usefixtures("jetstream_log")
async def test_status_reports_the_relay_lag_of_the_jetstream_log(
    data_dir: Path, nc: Client, nats_server: EmbeddedServer
) -> None:
    await _lag_is_reported(data_dir, nc, nats_server)


async def test_status_makes_no_sql_log(
    sql_log: dict[str, str], data_dir: Path, nc: Client, nats_server: EmbeddedServer
) -> None:
    """No SQLite file and no PostgreSQL table appear; a log not made yet (a context that
    has not saved anything) is no problem of its relay's: no lag, no problem."""
    relay = await _relay_of(Settings(nats_url=nats_server.url, data_dir=data_dir), nc)
    assert "log_head" not in relay and "problems" not in relay
    if "POSTGRES_SCHEMA" not in sql_log:
        assert not (data_dir / "sales.sqlite").exists()
        return
    with postgres("test", "the postgres log") as db:
        tables = db.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (sql_log["POSTGRES_SCHEMA"],),
        ).fetchall()
    assert tables == []


@pytest.mark.usefixtures("jetstream_log")
async def test_status_makes_no_jetstream_log(
    data_dir: Path, nc: Client, nats_server: EmbeddedServer
) -> None:
    report = await collect(system, Settings(nats_url=nats_server.url, data_dir=data_dir), nc)
    relay = report["contexts"]["sales"]
    assert "log_head" not in relay and "problems" not in relay  # not made yet: no problem
    assert not [p for p in report["problems"] if p.startswith("relay sales")]
    with pytest.raises(NotFoundError):
        await nc.jetstream().stream_info("sales_log")
