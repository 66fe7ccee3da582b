"""A NATS protocol peer that announces any version: enough of a server for a client to
connect and read its INFO line, so the version check can be tested without old binaries."""

from __future__ import annotations

import json
import socket
import threading
from types import TracebackType


class FakeNatsServer:
    def __init__(self, version: str) -> None:
        self.version = version
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen()
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        self._sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        info = {
            "server_id": "FAKE",
            "server_name": "fake",
            "version": self.version,
            "proto": 1,
            "host": "127.0.0.1",
            "port": self.port,
            "headers": True,
            "max_payload": 1048576,
            "jetstream": True,
        }
        with conn:
            conn.sendall(b"INFO " + json.dumps(info).encode() + b"\r\n")
            conn.settimeout(0.1)
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                for _ in range(data.count(b"PING")):
                    conn.sendall(b"PONG\r\n")

    def __enter__(self) -> FakeNatsServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(5)
