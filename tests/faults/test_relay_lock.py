"""One relay per context (issue 16, #14): a second ``toolkit relay sales``, or a second
``toolkit serve`` of the same data folder, used to run beside the first, both logging
refusals. Now it is refused at start with one line naming the first, and the lock goes
with its holder, also when that is killed by SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from contexts.sales import Sales
from tests.conftest import free_port, nats_servers_using, wait_for

LINE = [{"sku": "tea", "quantity": 1, "unit_price": "1.00"}]


def _env(tmp: Path, log_env: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, "TMPDIR": str(tmp), **log_env}
    env.pop("NATS_URL", None)
    return env


def _command(data: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "toolkit", "--data-dir", str(data), *args]


def _refused(done: subprocess.CompletedProcess[str], pid: int, role: str) -> None:
    """``done`` exited 1 with one line naming the running relay."""
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("toolkit: error: a relay of sales already runs (")
    assert f"{role}, pid {pid} on {socket.gethostname()}" in line


def _run(data: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run a command that should end by itself: one that runs on, beside the relay that
    holds the lock, fails the test."""
    try:
        return subprocess.run(
            _command(data, *args), capture_output=True, text=True, env=env, timeout=40
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(f"toolkit {' '.join(args)} ran beside the first relay") from None


def _start(
    running: list[subprocess.Popen[bytes]], data: Path, env: dict[str, str], *args: str
) -> tuple[subprocess.Popen[bytes], Path]:
    log = data.parent / f"{len(running)}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(_command(data, *args), stdout=out, stderr=out, env=env)
    running.append(process)
    return process, log


@pytest.mark.timeout(180)
async def test_a_second_relay_is_refused_and_the_lock_goes_with_its_holder(
    tmp_path: Path, log_env: dict[str, str], running: list[subprocess.Popen[bytes]]
) -> None:
    data = tmp_path / "data"
    sales = Sales(env=log_env, data_dir=data)
    sales.place_order(sales.register_customer("Ann", "ann@example.com"), LINE)
    sales.close()
    env = _env(tmp_path, log_env)
    first, log = _start(running, data, env, "relay", "sales")
    await wait_for(lambda: b"relaying sales log" in log.read_bytes() or first.poll(), within=30)
    assert first.poll() is None, log.read_text()

    _refused(_run(data, env, "relay", "sales"), first.pid, "toolkit relay sales")
    _refused(_run(data, env, "serve", "--port", str(free_port())), first.pid, "toolkit relay sales")
    assert first.poll() is None  # the first one goes on

    first.send_signal(signal.SIGKILL)
    first.wait(10)
    deadline = time.monotonic() + 15  # a PostgreSQL session ends a moment after its client
    while (after := _run(data, env, "relay", "sales", "--once")).returncode == 1:
        assert "already runs" in after.stderr and time.monotonic() < deadline, after.stderr
    assert after.returncode == 0, after.stderr
    assert "relayed to log position 2: 0 published" in after.stderr  # the first one did


@pytest.mark.timeout(120)
async def test_a_relay_beside_serve_is_refused(
    tmp_path: Path, running: list[subprocess.Popen[bytes]]
) -> None:
    data = tmp_path / "data"
    env = _env(tmp_path, {})
    serve, log = _start(running, data, env, "serve", "--port", str(free_port()))
    await wait_for(lambda: b"Application startup complete" in log.read_bytes() or serve.poll())
    assert serve.poll() is None, log.read_text()
    _refused(_run(data, env, "relay", "sales"), serve.pid, "toolkit serve")
    second = _run(data, env, "serve", "--port", str(free_port()))
    _refused(second, serve.pid, "toolkit serve")
    assert second.stderr.strip().endswith("(or serve with --no-relay)")
    serve.send_signal(signal.SIGTERM)
    serve.wait(20)
    assert not nats_servers_using(tmp_path)


def test_the_lock_names_its_holder_in_process(data_dir: Path, log_env: dict[str, str]) -> None:
    from toolkit.errors import RelayBusyError  # (imported here: the old code has neither)
    from toolkit.write.relay_lock import relay_lock

    first, second = (Sales(env=log_env, data_dir=data_dir) for _ in range(2))
    try:
        with (
            relay_lock(first, "mine"),
            pytest.raises(RelayBusyError, match=f"mine, pid {os.getpid()} on "),
            relay_lock(second, "other"),
        ):
            pass
        with relay_lock(second, "other"):  # released with the block
            pass
    finally:
        first.close()
        second.close()
