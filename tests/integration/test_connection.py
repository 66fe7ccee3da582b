from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from nats.aio.client import Client

from contexts.sales import Sales
from tests.conftest import nats_servers_using, wait_for
from tests.fake_nats import FakeNatsServer
from tests.flow import read_all
from toolkit import Relay, ServerVersionError
from toolkit.errors import ConnectError
from toolkit.nats.connection import Connection, connect
from toolkit.nats.embedded import EmbeddedServer

OLD_BINARY = "/usr/sbin/nats-server"


@pytest.mark.parametrize("version", ["2.9.10", "2.2.0", "1.4.1", "2.9.25-beta.1"])
async def test_old_servers_are_refused_with_the_versions_named(version: str) -> None:
    with FakeNatsServer(version) as server, pytest.raises(ServerVersionError) as raised:
        await connect(server.url)
    message = str(raised.value)
    assert f"version {version}" in message and "requires 2.10 or newer" in message
    assert "\n" not in message


async def test_unreachable_server_fails_fast_with_a_clear_error() -> None:
    with pytest.raises(ConnectError, match=r"cannot connect to NATS at nats://127\.0\.0\.1:1"):
        await connect("nats://127.0.0.1:1")


def _toolkit(
    *args: str, env: dict[str, str], timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "toolkit", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=timeout,
    )


def test_demo_against_an_old_server_exits_with_one_line(tmp_path: Path) -> None:
    with FakeNatsServer("2.9.10") as server:
        done = _toolkit("demo", "--orders", "10", env={"NATS_URL": server.url})
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "version 2.9.10" in lines[0] and "2.10 or newer" in lines[0]


@pytest.mark.skipif(
    not shutil.which(OLD_BINARY), reason=f"no pre-2.10 nats-server at {OLD_BINARY} on this machine"
)
def test_demo_against_a_real_old_server(tmp_path: Path) -> None:
    version = subprocess.run([OLD_BINARY, "--version"], capture_output=True, text=True).stdout
    if "v2.9" not in version and "v2.8" not in version:
        pytest.skip(f"{OLD_BINARY} is {version.strip()}, not older than 2.10")
    with EmbeddedServer(tmp_path / "old", binary=OLD_BINARY) as server:
        done = _toolkit("demo", "--orders", "10", env={"NATS_URL": server.url})
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "version 2.9" in lines[0], done.stderr
    assert not nats_servers_using(tmp_path)


async def close_by_server(client: Client) -> None:
    """Publish a subject longer than the server's control-line limit (4096 bytes): the
    server answers -ERR 'Maximum Control Line Exceeded' and closes the connection."""
    await client.publish("x." + "x" * 70_000, b"")
    await wait_for(lambda: client.is_closed)
    assert "maximum control line exceeded" in str(client.last_error)


async def test_a_connection_replaces_a_client_the_server_closed(
    nats_server: EmbeddedServer,
) -> None:
    prepared: list[Client] = []

    async def prepare(client: Client) -> None:
        prepared.append(client)

    connection = await Connection(nats_server.url, on_connect=prepare).open()
    try:
        first = connection.client
        await close_by_server(first)
        second = await connection.current()
        assert second is not first and second.is_connected
        assert prepared == [first, second]  # what the owner needs, on each client
        assert (connection.replaced, connection.trouble) == (1, None)
        info = await connection.js.account_info()  # the JetStream context follows
        assert info.streams == 0
    finally:
        await connection.close()
    assert second.is_closed  # closed here: not replaced, and said so
    with pytest.raises(ConnectError, match="is closed"):
        connection.client  # noqa: B018


async def test_a_relay_on_a_bare_client_the_server_closed_stops_and_says_why(
    nats_server: EmbeddedServer, data_dir: Path
) -> None:
    """A nats-py client handed in directly cannot be connected again (its settings are
    not known): the relay stops with one line instead of retrying on it for ever."""
    sales = Sales(data_dir=data_dir)
    nc = await connect(nats_server.url)
    try:
        sales.register_customer("Ann", "ann@example.org")
        await Relay(sales, nc).run(until_head=True)
        await close_by_server(nc)
        sales.register_customer("Bob", "bob@example.org")
        with pytest.raises(ConnectError, match=r"give a toolkit\.Connection instead"):
            await asyncio.wait_for(Relay(sales, nc).run(until_head=True), 10)
    finally:
        sales.close()
    check = await connect(nats_server.url)
    try:
        assert len(await read_all(check)) == 1
    finally:
        await check.close()
