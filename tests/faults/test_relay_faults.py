"""The relay keeps its promise when things break: every public event of the log on the
stream exactly once, in log order, after servers stop and relays are killed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from subprocess import PIPE

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from benchmarks.relay import fill_log
from contexts.sales import Sales
from tests.conftest import free_port, wait_for
from tests.flow import assert_stream_is_the_log, public_positions
from toolkit import Relay
from toolkit.nats.connection import connect
from toolkit.nats.embedded import EmbeddedServer

LINE = {"sku": "tea", "quantity": 1, "unit_price": "2.00"}


def kill_after(rng: random.Random, held: int, total: int, kills_left: int) -> int:
    """How many more messages to let the relay publish before the next kill: a random
    share of what is left, so that each kill lands mid-relay whatever the last one did.
    (A relay killed still delivers what it had written, up to its window of 10,000
    unacknowledged messages: the stream grows past the kill by up to that much.)"""
    return rng.randrange(1, max(2, (total - held) // (kills_left + 1)))


async def stream_holds(nc: Client, count: int, within: float = 60.0) -> int:
    """Await until stream ``sales`` holds at least ``count`` messages; returns how many."""
    js = nc.jetstream()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            held = (await js.stream_info("sales")).state.messages
        except NotFoundError:  # the relay has not created it yet
            held = 0
        if held >= count:
            return held
        if loop.time() > deadline:
            raise AssertionError(f"stream sales holds {held} of {count} messages after {within}s")
        await asyncio.sleep(0.002)


class Published:
    """Counts the messages published on the stream's subjects as they pass (a core
    subscription). A kill timed by polling ``stream_info`` lands late on a loaded machine:
    a relay carries thousands of events in one such round trip, and once (in CI) had
    relayed everything before the kill that was meant for a sixth of the way."""

    def __init__(self) -> None:
        self.count = 0
        self._waiting: list[tuple[int, asyncio.Event]] = []

    async def start(self, nc: Client) -> None:
        await nc.subscribe("sales.>", cb=self._on_message)
        await nc.flush()  # subscribed before anything is published

    async def _on_message(self, _: Msg) -> None:
        self.count += 1
        for target, reached in self._waiting:
            if self.count >= target:
                reached.set()

    async def grown_by(self, count: int, within: float = 60.0) -> None:
        """Await ``count`` more messages than when called (duplicates of a restarted relay
        count too: the kill comes at most that much early); at once for none."""
        if count <= 0:
            return
        reached = asyncio.Event()
        self._waiting.append((self.count + count, reached))
        try:
            async with asyncio.timeout(within):
                await reached.wait()
        finally:
            self._waiting = [w for w in self._waiting if w[1] is not reached]


def place_orders_until(sales: Sales, done: threading.Event) -> None:
    customer = sales.register_customer("Ann", "ann@example.com")
    while not done.is_set():
        order = sales.place_order(customer, [LINE])
        if order.int % 4 == 0:
            sales.add_order_note(order, "private")
        time.sleep(0.002)  # a steady trickle of commands, not a benchmark


async def test_relay_rides_out_a_server_restart(sales: Sales, tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path / "nats", port=free_port()).start()
    nc = await connect(server.url)
    relay = Relay(sales, nc, ack_timeout=2.0, retry_delay=0.1, max_retry_delay=0.5)
    stop, done = asyncio.Event(), threading.Event()
    relaying = asyncio.create_task(relay.run(stop))
    producing = asyncio.create_task(asyncio.to_thread(place_orders_until, sales, done))
    try:
        await wait_for(lambda: relay.stats.stream_sequence >= 100)
        server.stop()
        await wait_for(lambda: relay.stats.restarts >= 1, within=15)  # noticed, said so
        down_at = relay.stats.stream_sequence
        await asyncio.sleep(2)  # the fault goes on: the server stays away a while
        assert relay.stats.stream_sequence == down_at
        server.start()
        await wait_for(lambda: relay.stats.stream_sequence > down_at + 100, within=30)
        done.set()
        await producing
        await wait_for(lambda: relay.lag() == 0, within=30)
        assert relay.stats.restarts >= 1
        stop.set()
        await relaying
        await assert_stream_is_the_log(nc, sales)
    finally:
        done.set()
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.gather(relaying, producing)
        await nc.close()
        server.stop()


async def test_relay_killed_again_and_again_loses_and_repeats_nothing(
    data_dir: Path, nats_server: EmbeddedServer, nc: Client, log_env: dict[str, str]
) -> None:
    sales = Sales(env=log_env, data_dir=data_dir)
    env = {**os.environ, **log_env}  # the relay process finds the same log
    fill_log(sales, 60_000)
    rng = random.Random(4)
    command = [sys.executable, "-m", "toolkit", "--data-dir", str(data_dir)]
    command += ["--nats-url", nats_server.url, "relay", "sales"]
    total = len(public_positions(sales))
    relayed: list[int] = []
    published = Published()
    await published.start(nc)
    try:
        for kills_left in range(6, 0, -1):
            held = await stream_holds(nc, 0)  # (0 while the relay has not made the stream)
            relay = await asyncio.create_subprocess_exec(*command, stderr=PIPE, env=env)
            assert relay.stderr is not None
            try:
                await published.grown_by(kill_after(rng, held, total, kills_left))
            finally:
                relay.send_signal(signal.SIGKILL)
                await relay.wait()
            relayed.append((await nc.jetstream().stream_info("sales")).state.messages)
        finished = await asyncio.create_subprocess_exec(*command, "--once", stderr=PIPE, env=env)
        _, errors = await asyncio.wait_for(finished.communicate(), 120)
        assert finished.returncode == 0, errors.decode()
        assert total >= 60_000
        assert len([n for n in relayed if 0 < n < total]) >= 5, relayed  # killed mid-relay
        print("stream length at each kill:", relayed, "of", total)
        await assert_stream_is_the_log(nc, sales)
    finally:
        sales.close()
