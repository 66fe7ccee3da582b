"""``toolkit demo``: the example system end to end, on an embedded server, in one process.

Sales takes commands in a worker thread while its relay and the shipping and billing
projections run live; then shipping is replayed from zero and compared with the live model,
the read endpoints are queried over real HTTP, and a summary is printed.
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
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING
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
from toolkit.read.projector import Projector
from toolkit.read.replay import rebuild
from toolkit.read.store import ReadModelStore
from toolkit.readmodels.sqlite import SQLiteHome
from toolkit.readmodels.tables import dump
from toolkit.system import System
from toolkit.write.relay import Relay

if TYPE_CHECKING:  # the example is imported from the clone when the demo runs: see example()
    from contexts.sales import Sales

console = Console(highlight=False)

SKUS = ["tea-earl-grey", "tea-sencha", "mug-blue", "kettle-steel", "filter-paper"]


@dataclass
class Workload:
    customers: list[UUID]
    orders: list[UUID]
    commands: int
    seconds: float


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
            commands += 1
        elif i % 7 == 6:
            sales.add_order_note(order_id, "gift wrap")  # private: never leaves sales
            commands += 1
    return Workload(customer_ids, order_ids, commands, time.perf_counter() - started)


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
    if not isinstance(system, System) or {"shipping", "billing"} - set(system.projections):
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
    sales: Sales | None = None
    stop = asyncio.Event()
    cancelled = threading.Event()
    homes = {name: SQLiteHome(settings.data_dir, name) for name in system.projections}
    stores = {
        name: ReadModelStore(homes[name].live(), cls()) for name, cls in system.projections.items()
    }
    try:
        async with open_nats(settings, name="demo") as nats:
            where = "embedded nats-server" if nats.embedded else "NATS"
            console.print(
                f"[bold]toolkit demo[/] on {where} at {nats.url}, data in {settings.data_dir}, "
                f"the sales log in {LOGS[log]}"
            )
            sales = sales_type(env=log_env(log, nats.url), data_dir=settings.data_dir)
            relay = Relay(sales, nats.connection)
            await ensure_stream(nats.js, relay.stream)
            projectors = {
                name: Projector(store.projection, store, nats.connection)
                for name, store in stores.items()
            }
            relay_task = asyncio.create_task(relay.run(stop))
            projector_tasks = [asyncio.create_task(p.run(stop)) for p in projectors.values()]
            background = [relay_task, *projector_tasks]

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

            head = sales.recorder.max_notification_id() or 0
            while relay.stats.position < head or any(
                p.stats.checkpoints.get("sales", 0) < relay.stats.stream_sequence
                for p in projectors.values()
            ):
                for task in background:
                    if task.done():
                        task.result()
                await asyncio.sleep(0.01)
            caught_up = time.perf_counter()
            stop.set()
            await asyncio.gather(*background)

            stream_events = relay.stats.stream_sequence
            live = {name: dump(store.db) for name, store in stores.items()}
            stores["shipping"].close()

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

            await _show_endpoints(settings, system, workload)

            commands = workload.commands
            table = Table(title="summary")
            table.add_column("what")
            table.add_column("figure", justify="right")
            table.add_row("commands handled by sales", f"{commands}")
            table.add_row("events in the sales log", f"{head}")
            table.add_row("integration events on stream 'sales'", f"{stream_events}")
            table.add_row("private events kept in sales", f"{head - stream_events}")
            table.add_row(f"commands/s ({LOGS[log]} log)", f"{commands / workload.seconds:,.0f}")
            table.add_row(
                "both projections at the head, ms after the last command",
                f"{(caught_up - commands_done) * 1000:,.0f}",
            )
            table.add_row("replay rate (events/s)", f"{stream_events / replay_seconds:,.0f}")
            table.add_row("relay lag at the end (events)", f"{relay.lag()}")
            for name, projector in projectors.items():
                table.add_row(
                    f"{name}: applied / checkpoint",
                    f"{projector.stats.applied} / {projector.stats.checkpoints.get('sales', 0)}",
                )
            console.print(table)
            sales.close()  # before its server stops, when the log is on it
            sales = None
    finally:
        cancelled.set()  # an interrupted demo stops placing orders
        for store in stores.values():
            with contextlib.suppress(Exception):
                store.close()
        if sales is not None:
            sales.close()
    return 0


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
