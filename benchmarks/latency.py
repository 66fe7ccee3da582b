"""End-to-end latency: from a command accepted by one context to its effect visible in
another context's read model, at fixed offered rates, beside one raw JetStream
publish -> consume hop at the same rates, in one run on one server.

    python -m benchmarks.latency [--rates 100 500 1000] [--seconds 10]

The toolkit's path: the command process places orders with ``Sales.place_order`` on a
schedule (``rate`` a second, open loop), each in a worker thread as ``toolkit serve`` runs
a command (so that saves arriving together may share a commit: group commit), its
``Relay`` running in the same process and woken by each save; shipping's ``Projector``
runs in a process of its own (another context) into its SQLite read model. An order's
latency is from ``place_order`` returning to the commit of the transaction that wrote its
shipment row (the projector's store notes the time right after each commit; both
processes read the same monotonic clock).

The raw hop: the same process publishes a message of the same size with ``js.publish``
(awaiting JetStream's acknowledgement, file storage) on the same schedule, and a process
of its own consumes it with a nats-py ordered push consumer; latency is from the publish
call to the consumer's callback. Rates take turns: toolkit then raw at each rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path
from typing import Any

import orjson
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy, StreamConfig
from rich.console import Console
from rich.table import Table

from contexts.sales import Sales
from projections.shipping import Shipments
from toolkit import Relay
from toolkit.nats.connection import connect
from toolkit.nats.embedded import EmbeddedServer
from toolkit.read.batches import TranslatedBatch
from toolkit.read.projector import Projector
from toolkit.read.store import ReadModelStore
from toolkit.readmodels.sqlite import SQLiteHome
from toolkit.wire.subjects import aggregate_token

TOOLKIT = "toolkit: command -> relay -> projector -> read model row"
RAW = "raw hop: js.publish -> ordered push consumer (baseline)"
PERCENTILES = (0.5, 0.99, 0.999)
LINES = [{"sku": "tea", "quantity": 2, "unit_price": Decimal("1.25")}]
HOP_STREAM = "hop"
COMMAND_THREADS = 40
"""As many worker threads as ``toolkit serve`` (anyio's default) has for commands."""
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Latencies:
    """One contender at one offered rate."""

    offered: float
    achieved: float
    """Commands (or messages) a second actually issued."""
    samples: list[float]
    """Seconds, sorted."""
    reached: list[float]
    """Seconds until the message reached the store (the projector's batch began), sorted:
    the rest is the read model's transaction."""
    unseen: int
    """Issued but never seen on the other side before the run ended."""

    def percentile(self, q: float, *, reached: bool = False) -> float:
        values = self.reached if reached else self.samples
        if not values:
            return math.nan
        return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


Seen = dict[str, tuple[float, float]]
"""When the other side got each id, and when it was visible there (monotonic seconds)."""
Results = dict[int, dict[str, Latencies]]
"""Per offered rate: each contender's latencies."""


class _TimedStore(ReadModelStore):
    """The shipping store, noting when each order reached it and when its shipment became
    visible (the transaction committed)."""

    visible: Seen

    def write(self, batch: TranslatedBatch, **kwargs: Any) -> Any:
        reached = time.monotonic()
        result = super().write(batch, **kwargs)
        now = time.monotonic()
        for message in batch.messages:
            if message.subject.endswith(".OrderPlaced"):
                self.visible[aggregate_token(message.subject)] = (reached, now)
        return result


async def _project(url: str, data_dir: Path, seen: Seen) -> None:
    nc = await connect(url)
    store = _TimedStore(SQLiteHome(data_dir, "shipping").live(), Shipments())
    store.visible = seen
    try:
        projector = Projector(Shipments(), store, nc)
        await projector.run(until_head=True)
        await _until_terminated(projector.run)
    finally:
        store.close()
        await nc.close()


async def _consume(url: str, _: Path, seen: Seen) -> None:
    nc = await connect(url)

    async def on_message(msg: Msg) -> None:
        now = time.monotonic()
        seen[msg.subject.split(".")[2]] = (now, now)

    try:
        sub = await nc.jetstream().subscribe(
            f"{HOP_STREAM}.>",
            stream=HOP_STREAM,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
            cb=on_message,
        )
        await _until_terminated(lambda stop: stop.wait())
        await sub.unsubscribe()
    finally:
        await nc.close()


async def _until_terminated(run: Callable[[asyncio.Event], Awaitable[object]]) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await run(stop)


CHILDREN = {"projector": _project, "consumer": _consume}


def child(kind: str, url: str, data_dir: str) -> None:
    """The other side, in a process of its own: says ``ready`` once it follows the
    stream, and on SIGTERM prints, as JSON, when it saw each id."""
    seen: Seen = {}
    asyncio.run(CHILDREN[kind](url, Path(data_dir), seen))
    print(orjson.dumps(seen).decode(), flush=True)


class ChildProcess:
    """A child process running one side of a benchmark (``child(kind, url, folder)`` of
    ``module``), started and stopped from the event loop: it says ``ready`` once it
    follows its stream, and on SIGTERM prints, as JSON, what it saw."""

    def __init__(self, module: str, kind: str, url: str, folder: Path) -> None:
        self.module = module
        self.args = (kind, url, str(folder))
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        code = f"from {self.module} import child; child(*{self.args!r})"
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE, cwd=ROOT
        )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 60)
        if line.strip() != b"ready":
            raise RuntimeError(f"the {self.args[0]} process did not start: {line!r}")

    async def signal(self, signum: int, answer: bytes) -> None:
        """Send ``signum`` and wait for the line that answers it."""
        assert self.process is not None and self.process.stdout is not None
        self.process.send_signal(signum)
        line = await asyncio.wait_for(self.process.stdout.readline(), 30)
        if line.strip() != answer:
            raise RuntimeError(f"the {self.args[0]} process said {line!r}, not {answer!r}")

    async def stop(self) -> Any:
        """Stop it (SIGTERM); what it printed last, decoded."""
        assert self.process is not None and self.process.stdout is not None
        self.process.send_signal(signal.SIGTERM)
        output = await asyncio.wait_for(self.process.stdout.read(), 60)
        if await self.process.wait() != 0:
            raise RuntimeError(f"the {self.args[0]} process exited with {self.process.returncode}")
        return orjson.loads(output.splitlines()[-1])

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()


def _times(seen: dict[str, list[float]]) -> Seen:
    return {key: (at[0], at[1]) for key, at in seen.items()}


async def on_schedule(rate: int, seconds: float, issue: Callable[[int], Awaitable[None]]) -> float:
    """Call ``issue(i)`` ``rate * seconds`` times at ``rate`` a second (late ones go at
    once); returns the rate achieved."""
    count = max(1, int(rate * seconds))
    started = time.monotonic()
    for i in range(count):
        # Yield to the loop even when late, as a server does between requests: the
        # relay runs on the same loop.
        await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
        await issue(i)
    return count / (time.monotonic() - started)


def _latencies(offered: int, achieved: float, sent: dict[str, float], seen: Seen) -> Latencies:
    samples = sorted(seen[key][1] - at for key, at in sent.items() if key in seen)
    reached = sorted(seen[key][0] - at for key, at in sent.items() if key in seen)
    return Latencies(offered, achieved, samples, reached, len(sent) - len(samples))


async def _settle(relay: Relay) -> None:
    for _ in range(600):  # at most 30 s
        if not relay.lag() and relay.idle:
            break
        await asyncio.sleep(0.05)  # the relay has no event to wait on
    await asyncio.sleep(0.5)  # the projector applies what it got at once


async def measure_async(rates: list[int], seconds: float, folder: Path) -> Results:
    sales = Sales(data_dir=folder / "sales")
    customers = [sales.register_customer(f"C{i}", f"c{i}@example.com") for i in range(10)]
    for i in range(20):  # warm up the log, the stream and the read model
        sales.place_order(customers[i % 10], LINES)
    body = b"x" * 450  # about an OrderPlaced envelope
    accepted: dict[int, dict[str, float]] = {rate: {} for rate in rates}
    published: dict[int, dict[str, float]] = {rate: {} for rate in rates}
    achieved: dict[tuple[int, str], float] = {}
    try:
        with EmbeddedServer(folder / "nats") as server:
            nc = await connect(server.url)
            stop_relay = asyncio.Event()
            relay = Relay(sales, nc)
            relaying = asyncio.create_task(relay.run(stop_relay))
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name=HOP_STREAM, subjects=[f"{HOP_STREAM}.>"]))
            projector = ChildProcess(
                "benchmarks.latency", "projector", server.url, folder / "shipping"
            )
            consumer = ChildProcess(
                "benchmarks.latency", "consumer", server.url, folder / "consumer"
            )
            loop = asyncio.get_running_loop()
            workers = ThreadPoolExecutor(COMMAND_THREADS, thread_name_prefix="command")
            placing: set[asyncio.Future[None]] = set()
            try:
                await _settle(relay)
                await projector.start()
                await consumer.start()
                for rate in rates:
                    orders, hops = accepted[rate], published[rate]

                    def place_one(i: int, orders: dict[str, float] = orders) -> None:
                        order = sales.place_order(customers[i % 10], LINES)
                        orders[str(order)] = time.monotonic()

                    async def place(i: int) -> None:  # not awaited: the next one may overlap
                        placing.add(loop.run_in_executor(workers, place_one, i))

                    async def hop(i: int, rate: int = rate, hops: dict[str, float] = hops) -> None:
                        key = f"{rate}-{i}"
                        hops[key] = time.monotonic()
                        await js.publish(f"{HOP_STREAM}.order.{key}.OrderPlaced", body)

                    achieved[rate, TOOLKIT] = await on_schedule(rate, seconds, place)
                    await asyncio.gather(*placing)
                    placing.clear()
                    await _settle(relay)
                    achieved[rate, RAW] = await on_schedule(rate, seconds, hop)
                    await asyncio.sleep(0.5)
                visible = _times(await projector.stop())
                consumed = _times(await consumer.stop())
            finally:
                projector.kill()
                consumer.kill()
                workers.shutdown()
                stop_relay.set()
                await relaying
                await nc.close()
    finally:
        sales.close()
    return {
        rate: {
            RAW: _latencies(rate, achieved[rate, RAW], published[rate], consumed),
            TOOLKIT: _latencies(rate, achieved[rate, TOOLKIT], accepted[rate], visible),
        }
        for rate in rates
    }


def measure(rates: list[int], seconds: float, folder: Path) -> Results:
    return asyncio.run(measure_async(rates, seconds, folder))


def report(seconds: float, results: Results) -> Table:
    table = Table(title=f"command accepted -> visible in another context, {seconds:g} s a rate")
    columns = ["offered /s", "path", "achieved /s", "samples"]
    columns += [f"p{q * 100:g} ms (x raw hop's)" for q in PERCENTILES]
    columns += ["p99 to reach the store ms"]
    for column in columns:
        table.add_column(column, justify="left" if column == "path" else "right")
    for rate, paths in results.items():
        raw = paths[RAW]
        for name, lat in paths.items():
            unseen = f" ({lat.unseen} unseen)" if lat.unseen else ""
            table.add_row(
                f"{rate:,}",
                name,
                f"{lat.achieved:,.0f}",
                f"{len(lat.samples):,}{unseen}",
                *(
                    f"{lat.percentile(q) * 1000:.2f} ({lat.percentile(q) / raw.percentile(q):.1f})"
                    for q in PERCENTILES
                ),
                f"{lat.percentile(0.99, reached=True) * 1000:.2f}" if name == TOOLKIT else "",
            )
    table.caption = (
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, nats-py {version('nats-py')}; "
        "SQLite log and read model, file storage; in brackets: the ratio to the raw hop's "
        "figure at the same rate"
    )
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency")
    parser.add_argument("--rates", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--seconds", type=float, default=10.0, help="at each rate (10)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as folder:
        results = measure(args.rates, args.seconds, Path(folder))
    Console(width=130).print(report(args.seconds, results))


if __name__ == "__main__":
    main()
