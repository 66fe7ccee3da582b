"""Issue 18, case 3: webhook secrets at rest and credentials in callback URLs.

Secrets are sealed in the store with the keys of TOOLKIT_WEBHOOK_KEYS (the first seals,
all open: rotation), a store of the previous version (plain secrets) is sealed when
opened; without a key the dispatcher refuses with one line and the subscription API
answers 503 while the rest of the API works. A callback URL with ``user:password@`` is
refused, and one a store already holds is never shown with its credentials.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet, InvalidToken
from nats.aio.client import Client

from contexts.sales import Sales
from contexts.system import system
from tests.conftest import free_port, serving, wait_for
from tests.flow import place_orders, relay_all
from tests.integration.test_webhooks import Receiver, dispatching, webhooks_app
from toolkit.config import Settings
from toolkit.errors import ConfigurationError
from toolkit.http.app import create_app
from toolkit.nats.embedded import EmbeddedServer
from toolkit.webhooks import SCHEMA_VERSION, WebhookStore, new_secret, verify
from toolkit.webhooks.keys import MissingWebhookKey

MARKER = "s3cr3t-marker-pw"
"""A password in callback URLs: it must show nowhere."""


@pytest.fixture
def log_env() -> dict[str, str]:
    return {}  # the sales fixture on a SQLite log: the log's kind is not the subject here


def stored_bytes(data_dir: Path) -> bytes:
    """Every byte the webhook stores hold on disk (the database, its WAL, its journal)."""
    return b"".join(p.read_bytes() for p in (data_dir / "webhooks").iterdir() if p.is_file())


def exposed(secret: str) -> list[bytes]:
    """The spellings of a secret a store could leak: with and without its prefix."""
    return [secret.encode(), secret.removeprefix("whsec_").encode()]


def sealed_secrets(data_dir: Path) -> list[str]:
    path = data_dir / "webhooks" / "sales.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as db:
        return [s for (s,) in db.execute("SELECT secret FROM subscription")]


async def test_secrets_are_sealed_at_rest_and_deliveries_still_verify(
    nats_server: EmbeddedServer, nc: Client, sales: Sales, data_dir: Path
) -> None:
    """The store held each subscriber's secret in plain text."""
    secret = new_secret()
    hooks = Receiver()
    async with (
        serving(hooks.app()) as receiver,
        serving(webhooks_app(data_dir, nats_server.url)) as base,
        httpx.AsyncClient(base_url=base) as api,
    ):
        created = await api.post(
            "/webhooks/sales/subscriptions",
            json={"url": f"{receiver}/hook", "event_type": "sales.OrderPlaced", "secret": secret},
        )
        assert created.status_code == 201, created.text
        assert secret not in created.text
        on_disk = stored_bytes(data_dir)  # while the API holds the store open (WAL and all)
        assert not any(text in on_disk for text in exposed(secret))
        place_orders(sales, 2)
        await relay_all(sales, nc)
        async with dispatching(nc, data_dir):
            await wait_for(lambda: len(hooks.accepted) == 2, within=30)
    for call in hooks.accepted:  # signed with the subscriber's own secret, as before
        assert verify(secret, call.headers, call.body)
    on_disk = stored_bytes(data_dir)
    assert not any(text in on_disk for text in exposed(secret))
    (sealed,) = sealed_secrets(data_dir)
    assert Fernet(os.environ["TOOLKIT_WEBHOOK_KEYS"]).decrypt(sealed.encode()) == secret.encode()


def test_keys_rotate_the_first_seals_all_open(data_dir: Path) -> None:
    """There was no key, so nothing to rotate: this pins how rotation works."""
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    path = data_dir / "webhooks" / "sales.sqlite"
    first, second = new_secret(), new_secret()
    with WebhookStore(path, "sales", [old]) as store:
        a = store.subscribe("sales.OrderPlaced", "https://a.example/hook", first, after=0)
        store.fan_out("sales:1", 1, "sales.OrderPlaced", b"{}")
    with WebhookStore(path, "sales", [new, old]) as store:  # step 1: the new key first
        b = store.subscribe("sales.OrderPlaced", "https://b.example/hook", second, after=0)
    for sealed in sealed_secrets(data_dir):  # what the old key sealed is sealed again
        Fernet(new).decrypt(sealed.encode())
        with pytest.raises(InvalidToken):
            Fernet(old).decrypt(sealed.encode())
    with WebhookStore(path, "sales", [new]) as store:  # step 2: the old key dropped
        secrets = {due.subscription_id: due.secret for due in store.claim_due(10, lease=60)}
    assert secrets == {a.id: first}
    with WebhookStore(path, "sales", [new]) as store:
        store.fan_out("sales:2", 2, "sales.OrderPlaced", b"{}")
        secrets = {due.subscription_id: due.secret for due in store.claim_due(10, lease=60)}
    assert secrets == {a.id: first, b.id: second}
    with pytest.raises(ConfigurationError, match="sealed by a key TOOLKIT_WEBHOOK_KEYS no longer"):
        WebhookStore(path, "sales", [old])  # a key dropped too soon: said, not guessed
    with pytest.raises(MissingWebhookKey):
        WebhookStore(path, "sales", [])
    with pytest.raises(ConfigurationError, match="key 1 is not a Fernet key") as refused:
        WebhookStore(path, "sales", ["not-a-key-" + MARKER])
    assert MARKER not in str(refused.value)


PLAIN_STORE = """
CREATE TABLE subscription (
    id TEXT PRIMARY KEY, event_type TEXT NOT NULL, url TEXT NOT NULL, secret TEXT NOT NULL,
    after INTEGER NOT NULL, created_at TEXT NOT NULL, UNIQUE (event_type, url)
);
CREATE TABLE event (id TEXT PRIMARY KEY, sequence INTEGER NOT NULL, type TEXT NOT NULL,
    body BLOB NOT NULL);
CREATE TABLE delivery (
    subscription_id TEXT NOT NULL, event_id TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'parked')),
    attempts INTEGER NOT NULL DEFAULT 0, due REAL NOT NULL, reason TEXT,
    updated_at TEXT NOT NULL, PRIMARY KEY (subscription_id, event_id)
);
CREATE INDEX delivery_due ON delivery (due) WHERE state = 'pending';
CREATE INDEX delivery_event ON delivery (event_id);
INSERT INTO event VALUES ('sales:5', 5, 'sales.OrderPlaced', x'7b7d');
INSERT INTO delivery VALUES ('a', 'sales:5', 'pending', 0, 0, NULL, '2025-01-01T00:00:00Z');
PRAGMA user_version = 1;
"""
"""A store as the previous version wrote it (schema 1): secrets in plain text."""


def test_a_store_with_plain_secrets_is_sealed_when_opened_with_a_key(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Schema 1 stores kept their secrets in plain text, and nothing converted them."""
    path = data_dir / "webhooks" / "sales.sqlite"
    path.parent.mkdir(parents=True)
    secret = new_secret()
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(PLAIN_STORE)
        db.execute(
            "INSERT INTO subscription VALUES ('a', 'sales.OrderPlaced', "
            "'https://a.example/hook', ?, 0, '2025-01-01T00:00:00Z')",
            (secret,),
        )
        db.commit()
    with pytest.raises(MissingWebhookKey):  # no key: refused, the store left as it is
        WebhookStore(path, "sales", [])
    assert secret.encode() in stored_bytes(data_dir)
    with caplog.at_level(logging.WARNING), WebhookStore(path, "sales") as store:
        (due,) = store.claim_due(10, lease=60)
        assert due.secret == secret
    assert "1 subscription secrets stored in plain text are now sealed" in caplog.text
    assert not any(text in stored_bytes(data_dir) for text in exposed(secret))
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    caplog.clear()
    with WebhookStore(path, "sales") as store:  # sealed once
        assert store.counts()["pending"] == 1
    assert "sealed" not in caplog.text


def test_without_a_key_the_dispatcher_refuses_with_one_line(tmp_path: Path) -> None:
    """The dispatcher started without any key: secrets went to disk in plain text."""
    env = {k: v for k, v in os.environ.items() if k not in ("TOOLKIT_WEBHOOK_KEYS", "NATS_URL")}
    command = [sys.executable, "-m", "toolkit", "--data-dir", str(tmp_path / "data")]
    unreachable = f"nats://127.0.0.1:{free_port()}"  # refused before NATS is asked
    done = subprocess.run(
        [*command, "--nats-url", unreachable, "webhooks", "sales"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "toolkit: error: webhook secrets are encrypted at rest: set TOOLKIT_WEBHOOK_KEYS to a "
        "key made with 'toolkit webhooks-key' (or python -c \"from cryptography.fernet import "
        'Fernet; print(Fernet.generate_key().decode())")'
    ]
    made = subprocess.run(
        [*command, "webhooks-key"], capture_output=True, text=True, env=env, timeout=60
    )
    assert made.returncode == 0, made.stderr
    Fernet(made.stdout.strip())  # a key, alone on stdout


async def test_without_a_key_the_subscription_api_answers_503_and_the_rest_works(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The subscription API took secrets without any key to seal them with."""
    monkeypatch.delenv("TOOLKIT_WEBHOOK_KEYS")
    settings = Settings(nats_url=f"nats://127.0.0.1:{free_port()}", data_dir=data_dir)
    assert settings.webhook_keys == ()
    app = create_app(system, settings, relay=False)
    body = {"url": "https://example.com/h", "event_type": "sales.OrderPlaced", "secret": "x"}
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as api:
        for answer in (
            await api.post("/webhooks/sales/subscriptions", json=body),
            await api.get("/webhooks/sales/subscriptions"),
            await api.get("/webhooks/sales/dead-letters"),
        ):
            assert answer.status_code == 503
            assert answer.headers["content-type"] == "application/problem+json"
            assert "webhook subscriptions are off" in answer.json()["detail"]
            assert "TOOLKIT_WEBHOOK_KEYS" in answer.json()["detail"]
            assert "retry-after" not in answer.headers  # waiting would not help
        read = await api.get("/billing/accounts/someone")  # reads need no key
        assert read.status_code != 503 or "webhook" not in read.text
        assert (await api.get("/health/live")).status_code == 200
    assert not (data_dir / "webhooks").exists()  # nothing written without a key


def test_serve_without_a_key_says_webhooks_are_off_in_one_line(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TOOLKIT_WEBHOOK_KEYS"}
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "toolkit", "--nats-url", nats_server.url,
         "--data-dir", str(tmp_path / "data"), "serve", "--no-relay", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True,
    )  # fmt: skip
    try:
        assert server.stderr is not None
        lines = []
        for line in server.stderr:  # its start lines come before uvicorn's
            lines.append(line)
            if "webhook subscriptions are off" in line:
                break
            assert server.poll() is None, lines
        assert "TOOLKIT_WEBHOOK_KEYS" in line and "toolkit webhooks-key" in line
        assert sum("webhook" in line for line in lines) == 1
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)


async def test_callback_urls_with_credentials_are_refused_and_never_shown(
    nats_server: EmbeddedServer,
    nc: Client,
    sales: Sales,
    data_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A ``user:password@`` URL was accepted and shown by the listing, the dead letters
    and the 409 message."""
    hooks = Receiver(failures=10, status=500)
    async with (
        serving(hooks.app()) as receiver,
        serving(webhooks_app(data_dir, nats_server.url)) as base,
        httpx.AsyncClient(base_url=base) as api,
    ):
        url = receiver.replace("http://", f"http://hooks:{MARKER}@") + "/hook"
        body = {"url": url, "event_type": "sales.OrderPlaced", "secret": new_secret()}
        for _ in range(2):  # the second would have been the 409
            refused = await api.post("/webhooks/sales/subscriptions", json=body)
            assert refused.status_code == 422, refused.text
            assert "must not hold credentials" in refused.text
            assert MARKER not in refused.text
        with WebhookStore.of(data_dir, "sales") as store:  # as an older version let in
            store.subscribe("sales.OrderPlaced", url, new_secret(), after=0)
        place_orders(sales, 1)
        await relay_all(sales, nc)
        with caplog.at_level(logging.INFO):
            async with dispatching(nc, data_dir, max_attempts=2) as dispatcher:
                await wait_for(lambda: dispatcher.stats.parked == 1, within=30)
        letters = await api.get("/webhooks/sales/dead-letters")
        assert len(letters.json()) == 1
        listed = await api.get("/webhooks/sales/subscriptions")
        (subscription,) = listed.json()
        one = await api.get(f"/webhooks/sales/subscriptions/{subscription['id']}")
        shown = [listed.text, one.text, letters.text, caplog.text]
        assert all(MARKER not in text for text in shown)
        assert subscription["url"] == f"{receiver}/hook"
        assert letters.json()[0]["url"] == f"{receiver}/hook"
    assert MARKER not in caplog.text
    sent = base64.b64encode(f"hooks:{MARKER}".encode()).decode()
    assert {c.headers["authorization"] for c in hooks.calls} == {f"Basic {sent}"}  # as before
