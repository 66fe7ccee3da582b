"""The embedded server a data folder's processes share (issue 16, #13): it used to be lost
for good when the process that started it stopped (the next process started a new one on
another port; the others dialled the old port for ever). Now every process on the folder
starts it again when none runs, on the same port, and follows it elsewhere when that port
is taken; the server is never left behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, nats_servers_using, wait_for
from tests.flow import sales_log
from toolkit.config import Settings
from toolkit.nats.connection import open_nats
from toolkit.nats.embedded import SharedServer, stop_keeping
from toolkit.readmodels.sqlite import SQLiteHome
from toolkit.readmodels.tables import dump


def _shipments(data: Path) -> int:
    with contextlib.suppress(Exception), SQLiteHome(data, "shipping").reader() as db:
        return len(dump(db)["shipment"]) if db is not None else 0
    return 0


def _recorded(data: Path) -> tuple[int, str]:
    """(server pid, URL) in the folder's record; (0, "") while a server starts."""
    try:
        pid, url = (data / "nats" / "server.url").read_text().split()
    except FileNotFoundError:
        return 0, ""
    return int(pid), url


class _Processes:
    """``toolkit`` commands on one data folder, each logging to a file of its own, all
    stopped at the end."""

    def __init__(self, tmp: Path, data: Path) -> None:
        self.tmp, self.data = tmp, data
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "TMPDIR": str(self.tmp)}
        env.pop("NATS_URL", None)
        log = self.tmp / f"{len(self.running)}-{args[0]}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "toolkit", "--data-dir", str(self.data), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self.running.append(process)
        return process

    def logs(self) -> str:
        """The last lines each process logged."""
        return "\n".join(
            f"--- {p.name}\n" + "\n".join(p.read_text().splitlines()[-12:])
            for p in sorted(self.tmp.glob("*.log"))
        )

    def stop_all(self) -> None:
        for process in self.running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.running:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[_Processes]:
    data = tmp_path / "data"
    data.mkdir()
    running = _Processes(tmp_path, data)
    try:
        yield running
    finally:
        running.stop_all()


@pytest.mark.timeout(150)
@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL", "server-SIGKILL"])
async def test_processes_on_a_data_folder_keep_their_server_when_its_starter_stops(
    processes: _Processes, stop: str
) -> None:
    """The issue's case: ``toolkit relay`` starts the folder's server, ``toolkit project``
    joins it; the relay stops (or its server is killed) and a new relay starts: the
    projector goes on projecting what the new relay publishes."""
    data = processes.data
    sales_log(data, 3)
    first = processes.start("relay", "sales")
    await wait_for(lambda: (data / "nats" / "server.url").exists(), within=30)
    processes.start("project", "shipping")
    try:
        await wait_for(lambda: _shipments(data) == 3, within=30)
        server_pid, url = _recorded(data)
        if stop == "server-SIGKILL":
            os.kill(server_pid, signal.SIGKILL)
        else:
            first.send_signal(getattr(signal, stop))
            first.wait(20)
            processes.start("relay", "sales")
        sales_log(data, 2)
        await wait_for(lambda: _shipments(data) == 5, within=40)
        assert _recorded(data)[1] == url  # started again where everyone dials
        assert len(nats_servers_using(data)) == 1
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{processes.logs()}") from None
    processes.stop_all()
    await wait_for(lambda: not nats_servers_using(processes.tmp), within=10)


OPEN = """
import asyncio, sys
from pathlib import Path
from toolkit.config import Settings
from toolkit.nats.connection import open_nats

async def main() -> None:
    await asyncio.to_thread(sys.stdin.readline)  # all start at once
    async with open_nats(Settings(data_dir=Path(sys.argv[1]))) as nats:
        await nats.js.account_info()
        print(nats.url, flush=True)
        await asyncio.to_thread(sys.stdin.readline)

asyncio.run(main())
"""


def test_processes_starting_at_once_share_one_server(tmp_path: Path) -> None:
    starting = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(OPEN), str(tmp_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        for p in starting:  # ready to go: now at once
            assert p.stdin is not None
            p.stdin.write("go\n")
        for p in starting:
            assert p.stdin is not None
            p.stdin.flush()
        urls = {p.stdout.readline().strip() for p in starting if p.stdout is not None}
        assert len(urls) == 1 and urls != {""}
        assert len(nats_servers_using(tmp_path)) == 1
    finally:
        for p in starting:
            if p.stdin is not None:
                p.stdin.close()
        for p in starting:
            p.wait(20)
    assert not nats_servers_using(tmp_path)


async def test_a_stale_record_after_a_reboot_is_not_trusted(tmp_path: Path) -> None:
    """After a reboot ``server.url`` names a server that no longer runs, and its pid may
    belong to another process by now: a server is started (on the recorded port)."""
    port = free_port()
    (tmp_path / "nats").mkdir()
    (tmp_path / "nats" / "server.url").write_text(f"{os.getpid()} nats://127.0.0.1:{port}\n")
    async with open_nats(Settings(data_dir=tmp_path)) as nats:
        await nats.js.account_info()
        assert nats.url == f"nats://127.0.0.1:{port}"
        assert len(nats_servers_using(tmp_path)) == 1
    assert not nats_servers_using(tmp_path)


async def test_a_killed_server_is_started_again_with_its_streams(tmp_path: Path) -> None:
    async with open_nats(Settings(data_dir=tmp_path)) as nats:
        await nats.js.add_stream(name="kept", subjects=["kept.>"])
        await nats.js.publish("kept.one", b"1")
        server_pid, url = _recorded(tmp_path)
        os.kill(server_pid, signal.SIGKILL)
        await wait_for(lambda: _recorded(tmp_path)[0] not in (0, server_pid), within=20)
        assert _recorded(tmp_path)[1] == url
        await wait_for(lambda: nats.client.is_connected, within=20)
        assert (await nats.js.stream_info("kept")).state.messages == 1
    assert not nats_servers_using(tmp_path)


async def test_a_process_follows_the_server_to_another_port(tmp_path: Path) -> None:
    """When the port of the server that stopped is taken by something else, the next
    one listens on another, and the processes still using the folder go there."""
    settings = Settings(data_dir=tmp_path)
    starter = open_nats(settings)
    first = await starter.__aenter__()
    async with open_nats(settings) as second:
        assert second.url == first.url
        port = int(first.url.rsplit(":", 1)[1])
        await starter.__aexit__(None, None, None)  # its server stops with it
        with socket.socket() as squatter:  # before the second process starts another
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            await wait_for(lambda: _recorded(tmp_path)[1] not in ("", first.url), within=20)
            moved = _recorded(tmp_path)[1]

            def connected_to_it() -> bool:
                at = second.client.connected_url
                return second.client.is_connected and f"nats://{at and at.netloc}" == moved

            await wait_for(connected_to_it, within=20)
            info = await asyncio.wait_for(second.js.account_info(), 10)
            assert info.limits is not None
    assert not nats_servers_using(tmp_path)


@pytest.mark.timeout(60)
async def test_processes_stopped_with_their_server_do_not_start_it_again(
    tmp_path: Path,
) -> None:
    """SIGTERM to a whole process group (systemd's default, ``docker stop``, Ctrl-C in a
    shell) reaches the folder's server with the processes using it: they used to start it
    again on their way out, and the projector then waited on it before exiting."""
    data = tmp_path / "data"
    sales_log(data, 3)
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("NATS_URL", None)
    toolkit = f"{sys.executable} -m toolkit --data-dir {data}"
    port = free_port()
    log = tmp_path / "group.log"
    with log.open("wb") as out:
        group = subprocess.Popen(  # noqa: ASYNC220 (one process group, as a shell job or a systemd unit)
            [
                "bash",
                "-c",
                f"{toolkit} project shipping & {toolkit} serve --port {port} --no-relay & "
                f"{toolkit} relay sales & wait",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        await wait_for(lambda: _shipments(data) == 3, within=40)
        await wait_for(lambda: b"Application startup complete" in log.read_bytes(), within=30)
        os.killpg(group.pid, signal.SIGTERM)
        await asyncio.to_thread(group.wait, 30)

        def gone() -> bool:  # every process of the group, the shell's children too
            try:
                os.killpg(group.pid, 0)
            except ProcessLookupError:
                return True
            return False

        await wait_for(gone, within=30)
        said = log.read_text(errors="replace")
        assert "had stopped: started it again" not in said, said
        assert "shipping: 3 applied" in said, said  # the projector said goodbye
        await wait_for(lambda: not nats_servers_using(tmp_path), within=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group.pid, signal.SIGKILL)


async def test_a_process_told_to_stop_does_not_start_its_server_again(tmp_path: Path) -> None:
    shared = SharedServer(tmp_path / "nats")
    url = await shared.url()  # none ran: this process started it
    keeping = asyncio.create_task(shared.keep(url, lambda _: None, every=0.02))
    try:
        stop_keeping()  # what a SIGTERM handler of the CLI does
        assert shared.server is not None
        shared.server.kill()  # the same signal reached the server
        await asyncio.wait_for(keeping, 5)  # the keeper ends instead of starting another
        assert not nats_servers_using(tmp_path)
    finally:
        keeping.cancel()
        shared.leave()
