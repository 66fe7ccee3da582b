"""One NATS account per context, with the example configuration
(contexts/nats-accounts.conf, docs/accounts.md): each context relays into a stream of its
own account; shipping's policy and projection read sales' stream, and sales' policy reads
shipping's, through the JetStream API the other account exports read-only
(``TOOLKIT_NATS_IMPORTS``); each account keeps its own lease bucket; and shipping can
neither write into sales' stream nor delete it."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from nats.js.api import ConsumerConfig, KeyValueConfig
from nats.js.errors import NoStreamResponseError, NotFoundError, ServiceUnavailableError

from contexts.sales import Sales
from contexts.sales.policy import MarkDispatchedOrdersShipped
from contexts.shipping import Shipping
from contexts.shipping.policy import ShipPlacedOrders
from projections.shipping import Shipments
from tests.conftest import Report
from tests.flow import MUGS, assert_stream_is_the_log, place_orders
from toolkit import Relay
from toolkit.config import Settings
from toolkit.nats.connection import Nats, open_nats
from toolkit.nats.embedded import EmbeddedServer
from toolkit.react.deadletters import PolicyDeadLetters, dead_letters_path
from toolkit.react.reactor import Reactor
from toolkit.react.runner import PolicyRunner
from toolkit.read.projector import Projector
from toolkit.read.store import ReadModelStore
from toolkit.readmodels.sqlite import SQLiteHome
from toolkit.readmodels.tables import dump
from toolkit.write.context import BoundedContext

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "contexts" / "nats-accounts.conf"
PAGE = ROOT / "docs" / "accounts.md"
LEASES = "toolkit_leases"
"""The bucket of leases (toolkit.nats.leases), one in each account."""
PASSWORDS = {name: "pw" + secrets.token_hex(16) for name in ("sales", "shipping", "billing")}


@pytest.fixture
def accounts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedServer]:
    for name, password in PASSWORDS.items():
        monkeypatch.setenv(f"{name.upper()}_PASSWORD", password)
    with EmbeddedServer(tmp_path / "nats", extra_args=["-c", str(CONFIG)]) as server:
        yield server


def as_(server: EmbeddedServer, context: str, imports: str) -> Settings:
    """A process of ``context``'s account, configured as the docs say."""
    return Settings.from_env(
        {
            "NATS_URL": server.url,
            "TOOLKIT_NATS_USER": context,
            "TOOLKIT_NATS_PASSWORD": PASSWORDS[context],
            "TOOLKIT_NATS_IMPORTS": imports,
        }
    )


async def react(policy: Any, context: BoundedContext[Any], at: Nats, data_dir: Path) -> int:
    letters = PolicyDeadLetters(dead_letters_path(data_dir, policy.name))
    try:
        stats = await Reactor(PolicyRunner(policy, context), letters, at.connection).run(
            until_head=True
        )
        return stats.reacted
    finally:
        letters.close()


async def project(at: Nats, folder: Path) -> dict[str, list[tuple[object, ...]]]:
    """Shipping's view of sales, built from the stream as ``at`` reads it: its rows."""
    home = SQLiteHome(folder, "shipping")
    store = ReadModelStore(home.live(), Shipments())
    try:
        await Projector(Shipments(), store, at.connection).run(until_head=True)
    finally:
        store.close()
    with home.reader() as model:
        assert model is not None
        return dump(model)


async def test_contexts_read_each_others_streams_only_through_their_exports(
    report: Report, accounts: EmbeddedServer, data_dir: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    sales, shipping = Sales(data_dir=data_dir), Shipping(data_dir=data_dir)
    try:
        _, orders = place_orders(sales, 6, cancel_every=4, note_every=3, line=MUGS)
        async with (
            open_nats(as_(accounts, "sales", "shipping"), name="sales") as at_sales,
            open_nats(as_(accounts, "shipping", "sales"), name="shipping") as at_shipping,
        ):
            # Sales relays into its own account; shipping's policy reads that stream
            # through its import, and shipping relays what it caused into its own.
            published = (await Relay(sales, at_sales.connection).run(until_head=True)).published
            assert published == 9  # the customer, 6 orders, 2 of them cancelled (notes private)
            reacted = await react(ShipPlacedOrders(), shipping, at_shipping, data_dir)
            assert reacted == 8  # every order placed or cancelled
            await Relay(shipping, at_shipping.connection).run(until_head=True)
            await assert_stream_is_the_log(at_sales.client, sales)

            # Shipping's projection of sales, built through the import, equals one built
            # in sales' own account.
            imported = await project(at_shipping, tmp_path / "imported")
            native = await project(at_sales, tmp_path / "native")
            assert imported == native and len(imported["shipment"]) == len(orders)

            # And the other way: sales' policy reads shipping's stream through its import.
            live = [o for i, o in enumerate(orders) if i % 4]  # the 1st and 5th cancelled
            for order in live:
                shipping.dispatch_shipment(order, "DHL")
            await Relay(shipping, at_shipping.connection).run(until_head=True)
            shipped = await react(MarkDispatchedOrdersShipped(), sales, at_sales, data_dir)
            assert shipped == len(live)
            assert [sales.get_order(o).status for o in live] == ["shipped"] * len(live)
            published += (await Relay(sales, at_sales.connection).run(until_head=True)).published

            # Each account has its own streams and its own bucket of leases, under the
            # same name; no consumer of another account is left on a stream.
            for at, own in ((at_sales, "sales"), (at_shipping, "shipping")):
                infos = await at.client.jetstream().streams_info()
                assert [(i.config.name, i.state.consumer_count) for i in infos] == [(own, 0)]
                bucket = await at.js.create_key_value(KeyValueConfig(bucket=LEASES, ttl=10))
                await bucket.put("holder", own.encode())
            for at, own in ((at_sales, "sales"), (at_shipping, "shipping")):
                entry = await (await at.js.key_value(LEASES)).get("holder")
                assert entry.value == own.encode()

            # Shipping cannot write into sales' stream: sales' subjects in shipping's
            # account reach no stream...
            with pytest.raises(NoStreamResponseError):
                await at_shipping.js.publish("sales.order.forged.OrderPlaced", b"{}")
            # ...nor delete, purge or change it: sales exports none of that, and shipping's
            # own JetStream has no stream of that name.
            for attempt in (
                at_shipping.js.delete_stream("sales"),
                at_shipping.js.purge_stream("sales"),
                at_shipping.client.request("JS.sales.API.STREAM.DELETE.sales", b"", timeout=2),
            ):
                with pytest.raises((ServiceUnavailableError, nats.errors.NoRespondersError)):
                    await attempt
            with pytest.raises(NotFoundError):
                await at_shipping.client.jetstream().delete_stream("sales")
            info = await at_sales.js.stream_info("sales")
            assert info.state.messages == info.state.last_seq == published
            # A limit (docs/accounts.md): consumer names are one token of the exported
            # subjects, so shipping may change a consumer of sales' own on that stream.
            queue = ConsumerConfig(durable_name="queue", filter_subjects=["sales.order.>"])
            await at_sales.js.add_consumer("sales", queue)
            changed = ConsumerConfig(name="queue", filter_subjects=["sales.nothing.>"])
            await at_shipping.js.add_consumer("sales", changed)
            after = await at_sales.js.consumer_info("sales", "queue")
            assert after.config.filter_subjects == ["sales.nothing.>"]
            report(
                "injected: shipping published onto sales.> and asked to delete and purge "
                "sales' stream; verified: no stream takes the publish, no responder for the "
                "deletes (not exported), the stream unchanged"
            )
    finally:
        sales.close()
        shipping.close()
    report(f"accounts: relays, two policies and a projection across accounts in "
           f"{time.monotonic() - started:.1f}s")  # fmt: skip


def test_the_docs_show_the_configuration_as_it_is() -> None:
    """Every ``text`` block of docs/accounts.md that quotes the configuration is in it."""
    config = CONFIG.read_text()
    quoted = re.findall(r"^```text\n(.*?)^```", PAGE.read_text(), re.DOTALL | re.MULTILINE)
    excerpts = [block for block in quoted if "accounts" in block or "service" in block]
    assert excerpts
    for block in excerpts:
        assert block in config, block
