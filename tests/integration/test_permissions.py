"""Who may write where, enforced by a real server with the example configuration
(contexts/nats-server.conf): sales relays into its own stream, shipping reads it, and
shipping publishing into sales' subjects is refused by the server and reported clearly.
Credentials never appear in logs or errors."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from contexts.sales import Sales
from projections.shipping import Shipments
from tests.conftest import Report
from tests.flow import MUGS, place_orders
from toolkit import Relay, RelayError
from toolkit.config import NatsAuth, Settings
from toolkit.errors import ConnectError
from toolkit.nats.connection import connect, on_permission_denied
from toolkit.nats.embedded import EmbeddedServer
from toolkit.read.projector import Projector
from toolkit.read.store import ReadModelStore
from toolkit.readmodels.sqlite import SQLiteHome

pytestmark = pytest.mark.timeout(60)

CONFIG = Path(__file__).resolve().parents[2] / "contexts" / "nats-server.conf"
PASSWORDS = {name: "pw" + secrets.token_hex(16) for name in ("sales", "shipping", "billing")}


@pytest.fixture
def secured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedServer]:
    for name, password in PASSWORDS.items():
        monkeypatch.setenv(f"{name.upper()}_PASSWORD", password)
    with EmbeddedServer(tmp_path / "nats", extra_args=["-c", str(CONFIG)]) as server:
        yield server


def as_(name: str) -> NatsAuth:
    return NatsAuth(user=name, password=PASSWORDS[name])


async def test_each_context_writes_only_its_own_stream(
    report: Report,
    secured: EmbeddedServer,
    data_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sales = Sales(data_dir=data_dir)
    try:
        place_orders(sales, 5, note_every=3, line=MUGS)
        sales_nc = await connect(secured.url, auth=as_("sales"))
        shipping_nc = await connect(secured.url, auth=as_("shipping"))
        try:
            stats = await Relay(sales, sales_nc).run(until_head=True)
            assert stats.published == 6

            # shipping reads sales' stream with its own consumer...
            home = SQLiteHome(tmp_path / "models", "shipping")
            store = ReadModelStore(home.live(), Shipments())
            try:
                await Projector(Shipments(), store, shipping_nc).run(until_head=True)
                assert store.checkpoint("sales") == 6
            finally:
                store.close()

            # ...but may not publish into it: the server refuses and says so.
            denials: list[str] = []
            denied = asyncio.Event()

            def refused(reason: str) -> None:
                denials.append(reason)
                denied.set()

            on_permission_denied(shipping_nc, refused)
            await shipping_nc.publish("sales.order.forged.OrderPlaced", b"{}")
            await shipping_nc.flush()
            await asyncio.wait_for(denied.wait(), 5)
            assert (
                denials[0]
                == 'permissions violation for publish to "sales.order.forged.orderplaced"'
            )

            info = await sales_nc.jetstream().stream_info("sales")
            assert info.state.messages == 6  # nothing forged got in
            report(f"injected: shipping published into sales; verified: refused ({denials[0]})")

            # A relay running with another context's credentials stops with one clear line.
            place_orders(sales, 1, note_every=3, line=MUGS)
            with pytest.raises(RelayError) as stopped:
                await Relay(sales, shipping_nc, ack_timeout=5).run(until_head=True)
            assert str(stopped.value).startswith("NATS refused the relay of sales: ")
            assert "permissions violation for publish" in str(stopped.value).lower()
            assert "\n" not in str(stopped.value)
        finally:
            await sales_nc.close()
            await shipping_nc.close()
    finally:
        sales.close()
    logged = caplog.text
    assert not any(password in logged for password in PASSWORDS.values())


async def test_bad_credentials_fail_with_one_line_that_holds_no_secret(
    secured: EmbeddedServer,
) -> None:
    wrong = NatsAuth(user="sales", password="not-" + PASSWORDS["sales"])
    with pytest.raises(ConnectError) as error:
        await connect(secured.url, auth=wrong)
    said = str(error.value).lower()
    assert "authorization" in said or "reset" in said, said  # a loaded server may just hang up
    assert "\n" not in said
    assert wrong.password is not None and wrong.password not in str(error.value)
    url = secured.url.replace("nats://", f"nats://sales:{wrong.password}@")
    with pytest.raises(ConnectError) as error:
        await connect(url)
    assert wrong.password not in str(error.value)
    settings = Settings(nats_auth=as_("sales"))
    assert PASSWORDS["sales"] not in repr(settings)


def test_credentials_come_from_the_environment(tmp_path: Path) -> None:
    seed = tmp_path / "sales.nk"
    seed.write_text("SUA...")
    env = {
        "TOOLKIT_NATS_USER": "sales",
        "TOOLKIT_NATS_PASSWORD": "pw",
        "TOOLKIT_NATS_NKEY": str(seed),
    }
    auth = Settings.from_env(env).nats_auth
    assert (auth.user, auth.password, auth.nkey_seed) == ("sales", "pw", str(seed))
    assert "pw" not in repr(auth)
    from toolkit.errors import ConfigurationError

    for bad, says in (
        ({"TOOLKIT_NATS_CREDS": str(tmp_path / "none.creds")}, "names no file"),
        ({"TOOLKIT_NATS_CERT": str(seed)}, "go together"),
        ({"TOOLKIT_NATS_PASSWORD": "pw"}, "needs TOOLKIT_NATS_USER"),
    ):
        with pytest.raises(ConfigurationError, match=says):
            Settings.from_env(bad)
