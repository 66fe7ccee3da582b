from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import nats_servers_using
from toolkit.errors import ServerStartError
from toolkit.nats.connection import connect
from toolkit.nats.embedded import EmbeddedServer


async def test_embedded_server_runs_jetstream_on_loopback_and_stops(tmp_path: Path) -> None:
    with EmbeddedServer(tmp_path / "nats") as server:
        assert server.url.startswith("nats://127.0.0.1:")
        nc = await connect(server.url)
        info = await nc.jetstream().account_info()
        assert info.limits is not None
        await nc.close()
        pid = server.process.pid if server.process else None
    assert pid is not None
    assert not Path(f"/proc/{pid}").exists()
    assert not nats_servers_using(tmp_path)


def test_a_server_that_cannot_start_says_why(tmp_path: Path) -> None:
    with pytest.raises(ServerStartError, match="exited with code"):
        EmbeddedServer(tmp_path / "nats", extra_args=["--no-such-flag"]).start()
    assert not nats_servers_using(tmp_path)


def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ServerStartError, match="not executable"):
        EmbeddedServer(tmp_path, binary=str(tmp_path / "nope"))


def _wait_gone(folder: Path, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := nats_servers_using(folder)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT", "exception"])
def test_no_server_outlives_its_process(tmp_path: Path, how: str) -> None:
    """However the owning process ends, its nats-server goes with it."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from toolkit.nats.embedded import EmbeddedServer
        server = EmbeddedServer({str(tmp_path / "nats")!r}).start()
        print(server.process.pid, flush=True)
        if {how!r} == "exception":
            raise RuntimeError("boom")
        time.sleep(60)
        """
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert owner.stdout is not None
    server_pid = int(owner.stdout.readline())
    assert Path(f"/proc/{server_pid}").exists()
    if how == "SIGKILL":
        owner.send_signal(signal.SIGKILL)
    elif how == "SIGINT":
        owner.send_signal(signal.SIGINT)
    owner.wait(15)
    assert _wait_gone(tmp_path) == []
