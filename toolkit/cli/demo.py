"""``toolkit demo``: the example system end to end, on an embedded server, in one process.

Sales takes commands in a worker thread while the relays of its three contexts (sales,
shipping, billing), their three policies and the shipping and billing projections run
live: each order placed becomes a shipment (shipping's policy) and an invoice (billing's);
then some shipments are dispatched and some invoices paid, and sales' policy marks the
dispatched orders shipped. Shipping is replayed from zero and compared with the live
model, with the policies still running: the contexts' logs are checked unchanged (a replay
never re-runs a policy). The read endpoints are queried over real HTTP, and a summary is
printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

import uvicorn
from rich.console import Console
from rich.table import Table

from toolkit.config import Settings
from toolkit.errors import ConfigurationError, ToolkitError
from toolkit.http.app import create_app
from toolkit.nats.connection import open_nats
from toolkit.nats.embedded import free_ports
from toolkit.nats.streams import ensure_stream
from toolkit.react.deadletters import PolicyDeadLetters, dead_letters_path
from toolkit.react.reactor import Reactor
from toolkit.react.runner import PolicyRunner
from toolkit.read.projector import Projector
from toolkit.read.replay import rebuild
from toolkit.read.store import ReadModelStore
from toolkit.readmodels.sqlite import SQLiteHome
from toolkit.readmodels.tables import dump
from toolkit.system import System
from toolkit.write.context import BoundedContext
from toolkit.write.relay import Relay

if TYPE_CHECKING:  # the example is imported from the clone when the demo runs: see example()
    from contexts.billing import Billing
    from contexts.sales import Sales
    from contexts.shipping import Shipping

console = Console(highlight=False)

SKUS = ["tea-earl-grey", "tea-sencha", "mug-blue", "kettle-steel", "filter-paper"]


@dataclass
class Workload:
    customers: list[UUID]
    orders: list[UUID]
    commands: int
    seconds: float
    cancelled: set[UUID] = field(default_factory=set)
    notes: int = 0
    """Private events: order notes, kept in sales."""


def drive_sales(
    sales: Sales,
    orders: int,
    customers: int,
    seed: int = 7,
    cancelled: threading.Event | None = None,
) -> Workload:
    """Register customers and place (and sometimes cancel or annotate) orders; stops
    early when ``cancelled`` is set."""
    rnd = random.Random(seed)
    started = time.perf_counter()
    customer_ids = [
        sales.register_customer(f"Customer {i}", f"customer{i}@example.com")
        for i in range(customers)
    ]
    order_ids: list[UUID] = []
    cancelled_ids: set[UUID] = set()
    notes = 0
    commands = customers + orders
    for i in range(orders):
        if cancelled is not None and cancelled.is_set():
            break
        lines = [
            {
                "sku": rnd.choice(SKUS),
                "quantity": rnd.randint(1, 12),
                "unit_price": Decimal(rnd.randint(199, 4999)) / 100,
            }
            for _ in range(rnd.randint(1, 3))
        ]
        order_id = sales.place_order(rnd.choice(customer_ids), lines)
        order_ids.append(order_id)
        if i % 10 == 9:
            sales.cancel_order(order_id, "customer asked")
            cancelled_ids.add(order_id)
            commands += 1
        elif i % 7 == 6:
            sales.add_order_note(order_id, "gift wrap")  # private: never leaves sales
            notes += 1
            commands += 1
    seconds = time.perf_counter() - started
    return Workload(customer_ids, order_ids, commands, seconds, cancelled_ids, notes)


@dataclass
class Chain:
    """What the demo asked of shipping and billing once the orders had their shipments
    and invoices: the orders whose shipments it dispatched and whose invoices it paid."""

    dispatched: list[UUID]
    paid: list[UUID]


def drive_chain(shipping: Shipping, billing: Billing, workload: Workload) -> Chain:
    """Dispatch the shipments of every other order not cancelled, and pay the invoices of
    two orders in three not cancelled (a shipment's and an invoice's id is its order's)."""
    live = [order for order in workload.orders if order not in workload.cancelled]
    dispatched = live[::2]
    paid = [order for i, order in enumerate(live) if i % 3 != 2]
    for order in dispatched:
        shipping.dispatch_shipment(order, "Parcelforce" if order.int % 2 else "DHL")
    for order in paid:
        billing.pay_invoice(order)
    return Chain(dispatched, paid)


def _free_port() -> int:
    return free_ports(1)[0]


def _get(url: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


LOGS = {"sqlite": "SQLite", "jetstream": "JetStream"}
"""Where the demo keeps the sales log: a SQLite file in its folder, or a JetStream stream
(``sales_log``, :mod:`toolkit.logs.jetstream`) on the demo's own server."""


def log_env(log: str, nats_url: str) -> dict[str, str]:
    """The environment that puts a context's log where ``log`` says."""
    if log == "jetstream":
        return {"PERSISTENCE_MODULE": "toolkit.logs.jetstream", "NATS_URL": nats_url}
    return {}


CHAIN = ("ship-orders", "invoice-orders", "mark-shipped")
"""The example's policies: shipping's and billing's, from sales' stream; sales', from
shipping's."""

EXAMPLE = "contexts.system:system"
"""The example system: in the project's clone (``contexts/``, ``projections/``), not in the
wheel, whose only top-level package is ``toolkit`` (generic names would shadow a user's)."""


def example(app_dir: Path) -> tuple[type[Sales], System]:
    """The example's sales context and system, imported as ``toolkit --system`` imports a
    system: from ``app_dir`` (the current folder unless ``--app-dir`` or ``TOOLKIT_APP_DIR``
    says), else from ``sys.path``. Run from the clone's root, the demo finds it there."""
    folder = app_dir.resolve()
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    try:
        from contexts.sales import Sales
        from contexts.system import system
    except ImportError as exc:
        raise ConfigurationError(
            "the demo runs the example system of the project's clone (contexts/, "
            f"projections/), which cannot be imported from {folder} ({exc}): run it from "
            "the clone's root or pass --app-dir <clone>"
        ) from None
    if (
        not isinstance(system, System)
        or {"shipping", "billing"} - set(system.projections)
        or set(CHAIN) - set(system.policies)
        or {"shipping", "billing"} - set(system.contexts)
    ):
        raise ConfigurationError(
            f"the demo runs the example system of the project's clone, but {EXAMPLE} "
            f"in {folder} is another one: run it from the clone's root or pass --app-dir <clone>"
        )
    return Sales, system


async def run_demo(
    settings: Settings, orders: int, customers: int, *, keep: bool = False, log: str = "sqlite"
) -> int:
    sales_type, system = example(settings.app_dir)
    folder = Path(tempfile.mkdtemp(prefix="toolkit-demo-"))
    settings = replace(settings, data_dir=folder, read_model_url=None)  # all in the folder
    try:
        return await _run(settings, sales_type, system, orders, customers, log)
    finally:
        if keep:
            console.print(f"data kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


async def _run(
    settings: Settings,
    sales_type: type[Sales],
    system: System,
    orders: int,
    customers: int,
    log: str,
) -> int:
    contexts: dict[str, BoundedContext[Any]] = {}
    stop = asyncio.Event()  # the projectors'
    chain_stop = asyncio.Event()  # the relays' and the policies': they outlive the replay
    cancelled = threading.Event()
    homes = {name: SQLiteHome(settings.data_dir, name) for name in system.projections}
    stores = {
        name: ReadModelStore(homes[name].live(), cls()) for name, cls in system.projections.items()
    }
    dead_letters: list[PolicyDeadLetters] = []
    background: list[asyncio.Task[Any]] = []
    try:
        async with (
            open_nats(settings, name="demo") as nats,
            contextlib.AsyncExitStack() as running,  # (ends first, interrupted too)
        ):
            running.push_async_callback(_wind_down, cancelled, [stop, chain_stop], background)
            where = "embedded nats-server" if nats.embedded else "NATS"
            console.print(
                f"[bold]toolkit demo[/] on {where} at {nats.url}, data in {settings.data_dir}, "
                f"the logs of sales, shipping and billing in {LOGS[log]}"
            )
            env = log_env(log, nats.url)
            sales = sales_type(env=env, data_dir=settings.data_dir)
            contexts["sales"] = sales
            for name in ("shipping", "billing"):
                contexts[name] = system.contexts[name](env=env, data_dir=settings.data_dir)
            shipping = cast("Shipping", contexts["shipping"])
            billing = cast("Billing", contexts["billing"])
            relays = {name: Relay(context, nats.connection) for name, context in contexts.items()}
            for relay in relays.values():
                await ensure_stream(nats.js, relay.stream)
            reactors: dict[str, Reactor[Any]] = {}
            for name in CHAIN:
                policy_class = system.policy(name)
                context = contexts[system.policy_context(policy_class).name]
                dead_letters.append(
                    PolicyDeadLetters(dead_letters_path(settings.data_dir, policy_class.name))
                )
                runner = PolicyRunner(policy_class(), context)
                reactors[name] = Reactor(runner, dead_letters[-1], nats.connection)
            projectors = {
                name: Projector(store.projection, store, nats.connection)
                for name, store in stores.items()
            }
            chain_tasks: list[asyncio.Task[Any]] = [
                *(asyncio.create_task(r.run(chain_stop)) for r in relays.values()),
                *(asyncio.create_task(r.run(chain_stop)) for r in reactors.values()),
            ]
            projector_tasks = [asyncio.create_task(p.run(stop)) for p in projectors.values()]
            background.extend([*chain_tasks, *projector_tasks])
            settled = Settled(relays, reactors, projectors, background)

            console.print(f"placing {orders} orders for {customers} customers through sales ...")
            workload_task = asyncio.create_task(
                asyncio.to_thread(drive_sales, sales, orders, customers, cancelled=cancelled)
            )
            done, _ = await asyncio.wait(
                [workload_task, *background], return_when=asyncio.FIRST_COMPLETED
            )
            if workload_task not in done:
                for task in done:
                    task.result()  # a background task failed: raise its error
            workload = workload_task.result()
            commands_done = time.perf_counter()
            await settled.wait()
            caught_up = time.perf_counter()
            requested = _published(relays["shipping"])
            console.print(
                f"shipping's policy requested {requested} shipments and billing's issued "
                f"{_published(relays['billing'])} invoices for {len(workload.orders)} orders "
                f"({len(workload.cancelled)} cancelled: called off, voided)"
            )

            chain = await asyncio.to_thread(drive_chain, shipping, billing, workload)
            console.print(
                f"dispatched {len(chain.dispatched)} shipments and paid {len(chain.paid)} "
                "invoices; sales' policy marks the dispatched orders shipped ..."
            )
            await settled.wait()
            shipped = [o for o in chain.dispatched if sales.get_order(o).status == "shipped"]
            if len(shipped) != len(chain.dispatched):
                raise ToolkitError("an order whose shipment was dispatched is not marked shipped")
            first = chain.dispatched[0] if chain.dispatched else None
            if first is not None:
                console.print(
                    f"order {first}: placed -> shipment {shipping.get_shipment(first).status} "
                    f"-> order {sales.get_order(first).status}; invoice "
                    f"{billing.get_invoice(first).status}"
                )
            _show_statuses(stores)
            stop.set()
            await asyncio.gather(*projector_tasks)

            stream_events = relays["sales"].stats.stream_sequence
            head = sales.recorder.max_notification_id() or 0
            live = {name: dump(store.db) for name, store in stores.items()}
            stores["shipping"].close()
            logs_before = {name: _log_head(context) for name, context in contexts.items()}

            console.print("replaying shipping from sequence 1 into a new generation ...")
            replay_started = time.perf_counter()
            result = await rebuild(system.projections["shipping"](), homes["shipping"], nats.client)
            replay_seconds = time.perf_counter() - replay_started
            with homes["shipping"].reader() as db:
                assert db is not None
                rebuilt = dump(db)
            if rebuilt != live["shipping"]:
                raise ToolkitError("the replayed shipping model differs from the live one")
            console.print(
                f"replayed {result.stats.applied} events into {result.generation.name}: "
                "[green]equal to the live model[/]"
            )
            await settled.wait(projectors=False)
            logs_after = {name: _log_head(context) for name, context in contexts.items()}
            if logs_after != logs_before:
                raise ToolkitError(f"the replay changed a log: {logs_before} -> {logs_after}")
            console.print(
                "the logs of sales, shipping and billing are unchanged by the replay, with "
                "the policies running: [green]no policy re-ran[/]"
            )
            chain_stop.set()
            await asyncio.gather(*chain_tasks)

            await _show_endpoints(settings, system, workload)

            commands = workload.commands
            table = Table(title="summary")
            table.add_column("what")
            table.add_column("figure", justify="right")
            table.add_row("commands handled by sales", f"{commands}")
            table.add_row("last position in the sales log", f"{head}")
            table.add_row("integration events on stream 'sales'", f"{stream_events}")
            table.add_row("private events kept in sales", f"{workload.notes}")
            table.add_row(f"commands/s ({LOGS[log]} log)", f"{commands / workload.seconds:,.0f}")
            table.add_row(
                "everything at the head, ms after the last order",
                f"{(caught_up - commands_done) * 1000:,.0f}",
            )
            table.add_row("replay rate (events/s)", f"{stream_events / replay_seconds:,.0f}")
            for name, relay in relays.items():
                table.add_row(
                    f"{name}: log head / stream head / relay lag",
                    f"{logs_after[name]} / {relay.stats.stream_sequence} / {relay.lag()}",
                )
            for name, reactor in reactors.items():
                stats = reactor.stats
                table.add_row(
                    f"policy {name}: reacted / rejected / parked",
                    f"{stats.reacted} / {stats.rejected} / {stats.parked}",
                )
            for name, projector in projectors.items():
                checkpoints = ", ".join(f"{s} {n}" for s, n in projector.stats.checkpoints.items())
                table.add_row(
                    f"{name}: applied / checkpoint", f"{projector.stats.applied} / {checkpoints}"
                )
            console.print(table)
            _close(contexts)  # before their server stops, when the logs are on it
    finally:
        for store in stores.values():
            with contextlib.suppress(Exception):
                store.close()
        for letters in dead_letters:
            letters.close()
        _close(contexts)
    return 0


def _show_statuses(stores: dict[str, ReadModelStore]) -> None:
    """What the read models of shipping's and billing's own streams hold, by status."""
    shown = []
    for name, table in (("dispatches", "dispatch"), ("invoices", "invoice")):
        if name in stores:
            rows = (
                stores[name]
                .db.execute(f"SELECT status, COUNT(*) FROM {table} GROUP BY status ORDER BY status")
                .fetchall()
            )
            shown.append(f"{name} " + ", ".join(f"{count} {status}" for status, count in rows))
    if shown:
        console.print(f"read models of shipping's and billing's streams: {'; '.join(shown)}")


async def _wind_down(
    cancelled: threading.Event, stops: list[asyncio.Event], background: list[asyncio.Task[Any]]
) -> None:
    """Stop the threads and tasks using the contexts before they close (an interrupted
    demo closed them under a saving thread: SIGSEGV, 1 in 30 at load)."""
    cancelled.set()
    for stop in stops:
        stop.set()
    for task in background:
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_default_executor()  # (their threads: joined)


def _published(relay: Relay) -> int:
    return relay.stats.stream_sequence


def _log_head(context: BoundedContext[Any]) -> int:
    return context.recorder.max_notification_id() or 0


def _close(contexts: dict[str, BoundedContext[Any]]) -> None:
    for context in contexts.values():
        with contextlib.suppress(Exception):
            context.close()
    contexts.clear()


@dataclass
class Settled:
    """Waits until nothing is in flight: every relay at its log's head, every policy and
    projector at the head of each stream it reads (as far as its relay has published)."""

    relays: dict[str, Relay]
    reactors: dict[str, Reactor[Any]]
    projectors: dict[str, Projector]
    background: list[asyncio.Task[Any]]

    async def wait(self, *, projectors: bool = True) -> None:
        while not self._settled(projectors):
            for task in self.background:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    task.result()  # a background task failed: raise its error
            await asyncio.sleep(0.01)

    def _settled(self, projectors: bool) -> bool:
        """(All on the event loop's thread, where reactors and relays also run: nothing
        moves while this looks.)"""
        published = {name: relay.stats.stream_sequence for name, relay in self.relays.items()}
        if any(relay.stats.position < _log_head(relay.context) for relay in self.relays.values()):
            return False
        for reactor in self.reactors.values():
            for stream in reactor.policy.streams:
                if reactor.stats.positions.get(stream, 0) < published[stream]:
                    return False
        for projector in self.projectors.values() if projectors else ():
            for translator in projector.projection.translators:
                stream = translator.stream
                if projector.stats.checkpoints.get(stream, 0) < published.get(stream, 0):
                    return False
        return True


async def _show_endpoints(settings: Settings, system: System, workload: Workload) -> None:
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(system, settings, relay=False),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if serving.done():
                serving.result()
            await asyncio.sleep(0.01)
        base = f"http://127.0.0.1:{port}"
        for path in (
            f"/shipping/shipments/{workload.orders[0]}",
            "/shipping/shipments?status=called_off&limit=2",
            f"/billing/accounts/{workload.customers[0]}",
            "/shipping/shipments/not-a-uuid",
        ):
            status, body = await asyncio.to_thread(_get, base + path)
            console.print(f"GET {path} -> {status}")
            console.print_json(data=body)
    finally:
        server.should_exit = True
        await serving
