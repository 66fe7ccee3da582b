"""Connections that the server closed are replaced.

nats-py reconnects after a network failure, but not after the server closed the
connection with an -ERR (credentials revoked or expired, a control line over the server's
max_control_line): that client is closed for good. Here a real server closes connections
both ways, and the relay, the projector, the feed, the webhook dispatcher and the
JetStream log each go on by themselves on a new connection; `/health/ready` says the
relay's connection is the trouble while it is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from eventsourcing.persistence import OperationalError

from contexts.sales import Sales
from contexts.system import system
from tests.conftest import create_read_models, eventually, serving, wait_for
from tests.integration.test_webhooks import Receiver
from toolkit.config import Settings
from toolkit.http.app import create_app
from toolkit.nats.connection import connect
from toolkit.nats.embedded import EmbeddedServer
from toolkit.readmodels.sqlite import SQLiteHome
from toolkit.webhooks import WebhookStore, dispatch, new_secret
from toolkit.write.relay import Relay

pytestmark = pytest.mark.timeout(120)

PASSWORD = "pw" + secrets.token_hex(16)
LINE = {"sku": "tea", "quantity": 1, "unit_price": "1.00"}


@dataclass
class Guarded:
    """A server with one user, whose password the test can revoke: the server reloads its
    configuration and closes that user's connections with -ERR 'Authorization
    Violation'; nats-py does not reconnect after it."""

    server: EmbeddedServer
    conf: Path

    @property
    def url(self) -> str:
        return self.server.url.replace("nats://", f"nats://app:{PASSWORD}@")

    async def set_password(self, password: str) -> None:
        self.conf.write_text(f"authorization {{ users = [{{user: app, password: {password}}}] }}")
        before = self._reloads()
        assert self.server.process is not None
        self.server.process.send_signal(signal.SIGHUP)
        await wait_for(lambda: self._reloads() > before)

    def _reloads(self) -> int:
        return self.server.log_path.read_text(errors="replace").count("Reloaded: authorization")

    @contextlib.asynccontextmanager
    async def revoked(self) -> AsyncIterator[None]:
        await self.set_password("revoked" + secrets.token_hex(8))
        try:
            yield
        finally:
            await self.set_password(PASSWORD)


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Guarded]:
    conf = tmp_path / "auth.conf"
    conf.write_text(f"authorization {{ users = [{{user: app, password: {PASSWORD}}}] }}")
    with EmbeddedServer(tmp_path / "nats", extra_args=["-c", str(conf)]) as server:
        yield Guarded(server, conf)


@contextlib.contextmanager
def running(*args: str, nats_url: str, tmp: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """``toolkit <args>`` in a process of its own, stopped (SIGTERM) afterwards; yields
    it and the file its log (stderr) goes to."""
    env = {**os.environ, "NATS_URL": nats_url, "TMPDIR": str(tmp)}
    said = tmp / f"{'-'.join(args[2:])}.log"
    with said.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "toolkit", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
        )
    try:
        yield process, said
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def tried_again(log: Path) -> bool:
    """Whether the process has tried to connect again, and was refused."""
    return "cannot connect to NATS" in log.read_text()


def shipments(data_dir: Path) -> int:
    with SQLiteHome(data_dir, "shipping").reader() as db:
        return 0 if db is None else int(db.execute("SELECT count(*) FROM shipment").fetchone()[0])


async def test_relay_and_projector_processes_go_on_after_the_server_closed_them(
    guarded: Guarded, data_dir: Path, tmp_path: Path
) -> None:
    sales = Sales(data_dir=data_dir)
    try:
        ann = sales.register_customer("Ann", "ann@example.org")
        sales.place_order(ann, [LINE])
        where = ("--data-dir", str(data_dir))
        with (
            running(*where, "relay", "sales", nats_url=guarded.url, tmp=tmp_path) as (relay, r),
            running(*where, "project", "shipping", nats_url=guarded.url, tmp=tmp_path) as (
                project,
                p,
            ),
        ):
            await wait_for(lambda: shipments(data_dir) == 1, within=30)

            async with guarded.revoked():  # both processes' connections are closed
                sales.place_order(ann, [LINE])
                await wait_for(lambda: all(tried_again(log) for log in (r, p)), within=30)
            sales.place_order(ann, [LINE])

            await wait_for(lambda: shipments(data_dir) == 3, within=30)
            assert relay.poll() is None and project.poll() is None
        for log in (r, p):
            said = log.read_text()
            assert "the server closed the connection (authorization" in said
            assert "connected again" in said
    finally:
        sales.close()


async def test_serve_goes_on_and_is_not_ready_while_its_relay_is_cut_off(
    guarded: Guarded, data_dir: Path
) -> None:
    settings = Settings(nats_url=guarded.url, data_dir=data_dir)
    create_read_models(data_dir, *system.projections.values())  # readiness waits for them
    async with (
        serving(create_app(system, settings)) as base,
        httpx.AsyncClient(base_url=base, timeout=30) as http,
    ):

        async def customer() -> None:
            created = await http.post("/sales/customers", json={"name": "A", "email": "a@x.org"})
            assert created.status_code == 201, created.text

        async def feed_holds(count: int) -> list[dict[str, Any]] | None:
            page = await http.get("/feed/sales")
            events: list[dict[str, Any]] = page.json().get("events", [])
            return events if page.status_code == 200 and len(events) == count else None

        async def ready(expected: int) -> dict[str, Any] | None:
            answer = await http.get("/health/ready")
            return answer.json() if answer.status_code == expected else None

        await customer()
        await eventually(lambda: feed_holds(1), within=20)
        await eventually(lambda: ready(200), within=20)

        async with guarded.revoked():
            await customer()
            not_ready = await eventually(lambda: ready(503), within=20)
            reasons = " ".join(not_ready["reasons"])
            assert "the relays' NATS connection: NATS closed the connection (authoriz" in reasons

        await customer()
        events = await eventually(lambda: feed_holds(3), within=30)
        assert [e["position"] for e in events] == [1, 2, 3]
        await eventually(lambda: ready(200), within=30)


async def test_the_webhook_dispatcher_goes_on_after_the_server_closed_it(
    guarded: Guarded, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hooks = Receiver()
    sales = Sales(data_dir=data_dir)

    async def relay() -> None:  # on a connection of its own, made for each call
        nc = await connect(guarded.url)
        try:
            await Relay(sales, nc).run(until_head=True)
        finally:
            await nc.close()

    stop = asyncio.Event()
    settings = Settings(nats_url=guarded.url, data_dir=data_dir, webhook_allow=("127.0.0.1",))
    async with serving(hooks.app()) as receiver:
        with WebhookStore.of(data_dir, "sales") as store:
            store.subscribe("sales.CustomerRegistered", f"{receiver}/c", new_secret(), 0)
        dispatcher = asyncio.create_task(dispatch(settings, "sales", stop, say=lambda _: None))
        try:
            sales.register_customer("Ann", "ann@example.org")
            await relay()
            await wait_for(lambda: len(hooks.accepted) == 1, within=30)

            async with guarded.revoked():  # the dispatcher's connection is closed

                def refused() -> bool:  # its first try to connect again
                    return "nats webhooks-sales: cannot connect to NATS" in caplog.text

                await wait_for(refused, within=30)
            sales.register_customer("Bob", "bob@example.org")
            await relay()
            await wait_for(lambda: len(hooks.accepted) == 2, within=30)
            assert not dispatcher.done()
        finally:
            stop.set()
            await dispatcher
            sales.close()
    names = [orjson.loads(call.body)["data"]["name"] for call in hooks.accepted]
    assert names == ["Ann", "Bob"]


async def test_the_jetstream_log_saves_again_after_the_server_closed_its_connection(
    guarded: Guarded, data_dir: Path
) -> None:
    env = {"PERSISTENCE_MODULE": "toolkit.logs.jetstream", "NATS_URL": guarded.url}
    sales = Sales(env=env, data_dir=data_dir)
    try:
        ann = sales.register_customer("Ann", "ann@example.org")
        async with guarded.revoked():
            with pytest.raises(OperationalError):
                sales.register_customer("Refused", "r@example.org")

        def saves() -> bool:
            try:
                sales.place_order(ann, [LINE])
            except OperationalError:
                return False
            return True

        await wait_for(saves, within=30, interval=0.2)
        # A save refused with OperationalError may or may not be stored (the server may
        # have stored it before the connection closed, as with a lost COMMIT reply), so
        # what is counted is what comes after the first save that was acknowledged.
        saved = len(sales.notification_log.select(start=1, limit=10))
        for _ in range(3):  # and every save after it
            sales.place_order(ann, [LINE])
        notifications = sales.notification_log.select(start=1, limit=10)
        assert len(notifications) == saved + 3
        assert [n.id for n in notifications] == list(range(1, saved + 4))
        stored = {(n.originator_id, n.originator_version) for n in notifications}
        assert len(stored) == len(notifications)  # none stored twice
    finally:
        sales.close()
