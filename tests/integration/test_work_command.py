"""``toolkit work notifications``: the example's work queue, run by the command line until
SIGTERM, sends each placed order's confirmation once and exits cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from contexts.sales import Sales
from tests.flow import relay_all
from toolkit.nats.connection import connect
from toolkit.nats.embedded import EmbeddedServer

LINE = [{"sku": "tea", "quantity": 1, "unit_price": "1.00"}]


def sent(outbox: Path) -> set[str]:
    """The orders whose confirmation is in the outbox (none before it exists)."""
    if not outbox.exists():
        return set()
    db = sqlite3.connect(outbox)
    try:
        return {order for (order,) in db.execute("SELECT order_id FROM sent")}
    except sqlite3.OperationalError:  # the table is being created
        return set()
    finally:
        db.close()


async def place_and_relay(data: Path, url: str, orders: int) -> set[str]:
    """Place ``orders`` orders in a sales log in ``data`` and relay them; their ids."""
    sales = Sales(data_dir=data)
    nc = await connect(url)
    try:
        ann = sales.register_customer("Ann", "ann@example.com")
        placed = {str(sales.place_order(ann, LINE)) for _ in range(orders)}
        await relay_all(sales, nc)
        return placed
    finally:
        await nc.close()
        sales.close()


def test_work_runs_the_notifications_queue_until_sigterm(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("NATS_URL", None)
    worker = subprocess.Popen(
        [sys.executable, "-m", "toolkit", "work", "notifications", "--workers", "2",
         "--data-dir", str(data), "--nats-url", nats_server.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    try:
        assert worker.stderr is not None
        # Started before sales' first relay: it waits for the stream.
        first = worker.stderr.readline()
        assert "notifications: stream sales does not exist yet; waiting for it" in first
        orders = asyncio.run(place_and_relay(data, nats_server.url, 3))
        outbox = data / "notifications" / "outbox.sqlite"
        deadline = time.monotonic() + 30
        while sent(outbox) != orders:
            assert worker.poll() is None, worker.communicate()
            assert time.monotonic() < deadline, f"sent {sent(outbox)} of {orders}"
            time.sleep(0.05)
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=20)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, err
    assert out == ""
    assert "working notifications: 2 worker(s) on queue confirmations of stream sales" in err
    assert "notifications: 3 done, 0 retried, 0 given up, 0 not from its relay (skipped)" in err


def test_an_unknown_queue_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "toolkit", "--data-dir", str(tmp_path), "work", "nowhere"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "toolkit: error: no work queue named 'nowhere' (known: notifications)"
    )


def test_work_and_generations_explain_themselves(tmp_path: Path) -> None:
    for name in ("work", "generations"):
        done = subprocess.run(
            [sys.executable, "-m", "toolkit", name, "--help"],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0
        assert f"usage: toolkit {name}" in done.stdout
    listed = subprocess.run(
        [sys.executable, "-m", "toolkit", "--help"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert "    generations " in listed.stdout and "    work " in listed.stdout
