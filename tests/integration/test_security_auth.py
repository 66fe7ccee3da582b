"""Security at the boundary (issue 18): with API tokens set, every route of the example
system's API but the health checks refuses a request without one; and a marker password in
``NATS_URL`` never shows, whatever a command prints: start lines, logs (``-v``), errors,
``status`` (text and JSON), readiness and ``/metrics`` of ``toolkit serve``."""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest
from starlette.routing import BaseRoute, Mount, Route

from contexts.sales import Sales
from contexts.system import system
from tests.conftest import free_port, serving
from toolkit.config import Settings
from toolkit.http.app import create_app
from toolkit.http.auth import OPEN_PATHS
from toolkit.nats.embedded import EmbeddedServer
from toolkit.redaction import RedactingFilter

pytestmark = pytest.mark.timeout(60)

MARKER = "Marker-Pa55"
TOKEN = "the-only-token"
WEBHOOK_KEY = base64.urlsafe_b64encode(b"k" * 32).decode()  # a Fernet key, for the dispatcher


def _filled(path: str) -> str:
    """``path`` with each parameter given a value of the right form (an id: a UUID)."""
    path = path.replace("{context}", "sales")
    return re.sub(r"\{[^}]+\}", "00000000-0000-4000-8000-000000000000", path)


def _routes(routes: Sequence[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, path) of every route, in included routers too (FastAPI keeps those apart
    in ``app.routes``) and a file under each mount."""
    for route in routes:
        if isinstance(route, Mount):
            yield "GET", f"{prefix}{route.path}/anything"
        elif hasattr(route, "original_router"):  # an included router
            context = getattr(route, "include_context", None)
            inner = prefix + str(getattr(context, "prefix", "") or "")
            yield from _routes(route.original_router.routes, inner)
        elif isinstance(route, Route):
            for method in sorted(route.methods or ()):
                if method != "HEAD":
                    yield method, prefix + route.path


async def test_every_route_but_health_needs_a_token(tmp_path: Path) -> None:
    with EmbeddedServer(tmp_path / "nats") as server:
        settings = Settings(nats_url=server.url, data_dir=tmp_path / "data", api_tokens=(TOKEN,))
        app = create_app(system, settings, relay=False)
        routes = list(_routes(app.routes))
        assert ("POST", "/sales/orders") in routes and ("GET", "/metrics") in routes, routes
        async with serving(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as http:
            for method, path in routes:
                body: dict[str, object] | None = {} if method in ("POST", "PUT", "PATCH") else None
                anonymous = await http.request(method, _filled(path), json=body)
                if path in OPEN_PATHS:
                    assert anonymous.status_code != 401, (method, path)
                    continue
                assert anonymous.status_code == 401, (method, path, anonymous.text)
                assert anonymous.headers["www-authenticate"].startswith("Bearer")
                wrong = await http.request(
                    method, _filled(path), json=body, headers={"Authorization": "Bearer x"}
                )
                assert wrong.status_code == 401, (method, path)
                allowed = await http.request(
                    method,
                    _filled(path),
                    json=body,
                    headers={"Authorization": f"Bearer {TOKEN}", "Prefer": "wait=0"},
                )
                assert allowed.status_code != 401, (method, path, allowed.text)
                assert TOKEN not in allowed.text


@pytest.fixture
def guarded_nats(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A server whose one user has the marker password."""
    extra = ["--user", "toolkit", "--pass", MARKER]
    with EmbeddedServer(tmp_path / "nats", extra_args=extra) as server:
        yield server


def _env(url: str, data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "TOOLKIT_"))}
    return env | {
        "NATS_URL": url,
        "TOOLKIT_DATA_DIR": str(data),
        "TOOLKIT_WEBHOOK_KEYS": WEBHOOK_KEY,
    }


def _run(env: dict[str, str], *args: str, cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "toolkit", *args],
        capture_output=True, text=True, env=env, timeout=30, cwd=cwd,
    )  # fmt: skip
    return f"$ toolkit {' '.join(args)} -> {done.returncode}\n{done.stdout}{done.stderr}"


@contextlib.contextmanager
def _started(env: dict[str, str], *args: str, cwd: Path) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "toolkit", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(20)


def _read_until(process: subprocess.Popen[str], wanted: str, within: float = 20.0) -> str:
    """What ``process`` printed until a line holding ``wanted`` (or it ended, or time ran out)."""
    assert process.stdout is not None
    seen, deadline = "", time.monotonic() + within
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while wanted not in seen and time.monotonic() < deadline:
            if selector.select(timeout=0.1):
                line = process.stdout.readline()
                if not line:
                    break
                seen += line
    return seen


def test_a_marker_password_never_shows(guarded_nats: EmbeddedServer, tmp_path: Path) -> None:
    port = guarded_nats.url.rsplit(":", 1)[1]
    url = f"nats://toolkit:{MARKER}@127.0.0.1:{port}"
    data = tmp_path / "data"
    sales = Sales(data_dir=data)
    sales.register_customer("Ann", "ann@example.com")
    sales.close()
    env = _env(url, data)
    said = [
        _run(env, "-v", "relay", "sales", "--once", cwd=tmp_path),
        _run(env, "-v", "project", "shipping", "--once", cwd=tmp_path),
        _run(env, "-v", "status", cwd=tmp_path),
        _run(env, "status", "--json", cwd=tmp_path),
        # refused: a wrong user, and a server that is not there
        _run(_env(url.replace("toolkit:", "nobody:"), data), "-v", "status", cwd=tmp_path),
        _run(_env(f"nats://toolkit:{MARKER}@127.0.0.1:{free_port()}", data), "relay", "sales",
             "--once", cwd=tmp_path),
    ]  # fmt: skip
    with _started(env, "-v", "webhooks", "sales", cwd=tmp_path) as hooks:
        said.append(_read_until(hooks, f"127.0.0.1:{port}", within=10))
    http_port = free_port()
    with _started(env, "-v", "serve", "--port", str(http_port), cwd=tmp_path) as serve:
        said.append(_read_until(serve, "Uvicorn running"))
        with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=10) as http:
            for path in ("/metrics", "/health/ready", "/sales/orders/x/cancellation"):
                answer = http.get(path) if path != "/sales/orders/x/cancellation" else (
                    http.post(path, json={})
                )  # fmt: skip
                said.append(f"{path} -> {answer.status_code}\n{answer.text}")
    everything = "\n".join(said)
    assert MARKER not in everything, everything
    assert f"nats://127.0.0.1:{port}" in everything  # the address is shown, without its password
    assert "relaying sales log onto stream" in said[0] and "projecting shipping" in said[1]


def test_log_records_are_redacted_whoever_logs_them(caplog: pytest.LogCaptureFixture) -> None:
    caplog.handler.addFilter(RedactingFilter())
    caplog.set_level(logging.WARNING, logger="psycopg")  # whatever an earlier test set
    log = logging.getLogger("psycopg")
    log.warning("cannot reach %s", f"postgresql://app:{MARKER}@db:5432/x")
    try:
        raise ConnectionError(f"nats://u:{MARKER}@h:4222 refused")
    except ConnectionError:
        log.exception("connect failed")
    assert "postgresql://db:5432/x" in caplog.text and "nats://h:4222" in caplog.text
    assert MARKER not in caplog.text
