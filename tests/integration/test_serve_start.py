"""``toolkit serve`` at start (issue 18, case 11): refused with one line when NATS is old
or away, as the other commands are; one line says where it serves from (credentials
redacted); bad flag values are usage errors; readiness gives NATS's reason as it is."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from contexts.system import system
from tests.conftest import free_port, serving
from tests.fake_nats import FakeNatsServer
from toolkit.config import Settings
from toolkit.http.app import create_app

pytestmark = pytest.mark.timeout(60)


def _serve(*args: str, tmp: Path, nats_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "TOOLKIT_"))}
    env |= {"TOOLKIT_DATA_DIR": str(tmp / "data")} | ({"NATS_URL": nats_url} if nats_url else {})
    return subprocess.run(
        [sys.executable, "-m", "toolkit", "serve", *args],
        capture_output=True, text=True, env=env, timeout=30, cwd=tmp,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--port", "99999"], "argument --port: 99999 is not a port"),
        (["--port", "-1"], "argument --port: -1 is not a port"),
        (["--port", "abc"], "argument --port: 'abc' is not a port number"),
        (["--host", ""], "argument --host: '' is not an address to bind"),
        (["--host", "a b"], "argument --host: 'a b' is not an address to bind"),
    ],
)
def test_bad_flag_values_are_usage_errors(flags: list[str], said: str, tmp_path: Path) -> None:
    done = _serve(*flags, tmp=tmp_path)
    assert done.returncode == 2, done.stderr
    assert said in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[0].startswith("usage: toolkit serve")


def test_an_unreachable_server_is_refused_with_one_line(tmp_path: Path) -> None:
    url = f"nats://app:Pa55word@127.0.0.1:{free_port()}"
    done = _serve("--port", str(free_port()), tmp=tmp_path, nats_url=url)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("toolkit: error: cannot connect to NATS at nats://127.0.0.1:"), last
    assert "Pa55word" not in done.stderr + done.stdout and "Uvicorn" not in done.stderr


def test_an_old_server_is_refused_with_one_line(tmp_path: Path) -> None:
    with FakeNatsServer("2.9.10") as server:
        done = _serve("--port", str(free_port()), tmp=tmp_path, nats_url=server.url)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "version 2.9.10" in lines[0] and "2.10 or newer" in lines[0]


async def test_readiness_gives_the_reason_without_a_status_prefix(tmp_path: Path) -> None:
    settings = Settings(nats_url=f"nats://127.0.0.1:{free_port()}", data_dir=tmp_path / "data")
    app = create_app(system, settings, relay=False)
    found: list[str] = []
    async with serving(app) as base, httpx.AsyncClient(base_url=base, timeout=15) as http:
        for _ in range(20):  # a probe may end before the connect attempt does: ask again
            ready = await http.get("/health/ready")
            assert ready.status_code == 503
            found = [r for r in ready.json()["reasons"] if r.startswith("NATS does not answer")]
            if found:
                break
    (reason,) = found
    assert "cannot connect to NATS at nats://127.0.0.1:" in reason
    assert "503:" not in reason, reason  # (the port may hold the digits 503)
