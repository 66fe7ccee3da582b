"""Read path: how fast a stream can be read in order, the toolkit's reader beside the
nats-py ways a user would write it, in one run on one server.

    python -m benchmarks.read_path [--messages N]

Every reader decodes nothing and counts messages, so the figures compare the transport
alone; ratios are against ``PullSubscription.fetch()``, the usual choice.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig
from rich.console import Console
from rich.table import Table

from toolkit.nats.connection import connect
from toolkit.nats.embedded import EmbeddedServer
from toolkit.read.reader import StreamReader

STREAM = "bench"
BODY = b'{"order_id":"5f0c7f3e-9c1e-4a59-8f0e-2b6f3f1a0c11","total":"12.30","lines":3}' * 2


async def fill(nc: Client, count: int) -> None:
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=STREAM, subjects=[f"{STREAM}.>"]))
    for start in range(0, count, 5000):
        for i in range(start, min(count, start + 5000)):
            await js.publish_async(f"{STREAM}.order.{i % 1000}.OrderPlaced", BODY)
        await js.publish_async_completed()


async def toolkit_reader(nc: Client, count: int) -> None:
    seen = 0
    async with StreamReader(nc, STREAM, batch_size=1000) as reader:
        while seen < count:
            seen += len(await reader.next_batch(max_wait=5))


async def fetch_loop(nc: Client, count: int) -> None:
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        f"{STREAM}.>",
        config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL),
        stream=STREAM,
    )
    seen = 0
    while seen < count:
        seen += len(await sub.fetch(1000, timeout=5))
    await sub.unsubscribe()


async def ordered_push(nc: Client, count: int) -> None:
    done = asyncio.Event()
    seen = 0

    async def on_message(_: Msg) -> None:
        nonlocal seen
        seen += 1
        if seen >= count:
            done.set()

    sub = await nc.jetstream().subscribe(
        f"{STREAM}.>", stream=STREAM, ordered_consumer=True, cb=on_message
    )
    await asyncio.wait_for(done.wait(), 120)
    await sub.unsubscribe()


Reader = Callable[[Client, int], Awaitable[None]]
READERS: dict[str, Reader] = {
    "PullSubscription.fetch(1000) (baseline)": fetch_loop,
    "nats-py ordered push consumer": ordered_push,
    "toolkit StreamReader": toolkit_reader,
}


async def measure(messages: int, folder: Path) -> dict[str, float]:
    rates: dict[str, float] = {}
    with EmbeddedServer(folder / "nats") as server:
        nc = await connect(server.url)
        try:
            await fill(nc, messages)
            for name, read in READERS.items():
                started = time.perf_counter()
                await read(nc, messages)
                rates[name] = messages / (time.perf_counter() - started)
        finally:
            await nc.close()
    return rates


def report(messages: int, rates: dict[str, float]) -> Table:
    baseline = next(iter(rates.values()))
    table = Table(title=f"reading {messages:,} messages of {len(BODY)} bytes, in order")
    table.add_column("reader")
    table.add_column("msg/s", justify="right")
    table.add_column("ratio to fetch()", justify="right")
    for name, rate in rates.items():
        table.add_row(name, f"{rate:,.0f}", f"{rate / baseline:.2f}")
    table.caption = f"{os.cpu_count()} cores, Python {sys.version.split()[0]}"
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.read_path")
    parser.add_argument("--messages", type=int, default=100_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-read-") as folder:
        rates = asyncio.run(measure(args.messages, Path(folder)))
    Console().print(report(args.messages, rates))


if __name__ == "__main__":
    main()
