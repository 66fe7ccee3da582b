"""Webhook destinations (issue 18, cases 1 and 2): a callback URL pointing inside, in any
spelling, is refused at registration and again at each delivery (no DNS rebinding); the
delivery connects to the address checked and follows no redirect; a URL no request can
be made of is refused at registration and, stored before, counts its attempts and is
parked; a dead letter keeps the status, never the receiver's body.

No outside network: the names that are not numbers nor ``localhost`` are answered by a
stand-in for the resolver, and every request goes to a receiver on loopback."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI
from nats.aio.client import Client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from contexts.sales import Sales
from contexts.system import system
from tests.conftest import serving, wait_for
from tests.flow import place_orders, relay_all
from tests.integration.test_webhooks import Receiver, dispatching, nowhere
from toolkit.config import Settings
from toolkit.errors import ConfigurationError
from toolkit.http import problems
from toolkit.http.feed import NatsLink
from toolkit.nats.embedded import EmbeddedServer
from toolkit.webhooks import destinations, new_secret, router

INTERNAL = {"db.internal": "10.0.0.5", "meta.internal": "169.254.169.254"}
"""Names an internal DNS would answer (the stand-in resolver's)."""


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key to seal the subscribers' secrets with (the API refuses to store them without)."""
    monkeypatch.setenv("TOOLKIT_WEBHOOK_KEYS", Fernet.generate_key().decode())


@pytest.fixture
def names(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[str]]]:
    """The resolver's answer for made-up names (changed by a test to rebind one); any
    other host goes to the operating system's resolver, as it would."""
    answers = {name: [address] for name, address in INTERNAL.items()}
    asked: list[str] = []
    real = destinations.resolve

    async def resolve(host: str, port: int) -> list[destinations.IPAddress]:
        asked.append(host)
        if host.rstrip(".") in answers:
            return [ipaddress.ip_address(a) for a in answers[host.rstrip(".")]]
        return await real(host, port)

    monkeypatch.setattr(destinations, "resolve", resolve)
    answers["asked"] = asked  # (what was asked, for the tests that count)
    yield answers


@pytest.fixture
def log_env() -> dict[str, str]:
    return {}  # the sales fixture on a SQLite log


def app(data_dir: Path, nats_url: str, allow: tuple[str, ...] = ()) -> FastAPI:
    api = FastAPI()
    problems.install(api)
    settings = Settings(nats_url=nats_url, data_dir=data_dir)
    if allow:
        settings = Settings(nats_url=nats_url, data_dir=data_dir, webhook_allow=allow)
    api.include_router(router(system.contexts, data_dir, NatsLink(settings)))
    return api


@contextlib.asynccontextmanager
async def client(
    data_dir: Path, nats_url: str, allow: tuple[str, ...] = ()
) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        serving(app(data_dir, nats_url, allow)) as base,
        httpx.AsyncClient(base_url=base) as http,
    ):
        yield http


async def register(api: httpx.AsyncClient, url: str) -> httpx.Response:
    body = {"url": url, "event_type": "sales.OrderPlaced", "secret": new_secret(), "after": 0}
    return await api.post("/webhooks/sales/subscriptions", json=body)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1/hook", "127.0.0.1 is a loopback address"),
        ("http://localhost:8080/hook", "localhost resolves to "),
        ("http://[::1]/hook", "::1 is a loopback address"),
        ("http://127.1/hook", "127.1 resolves to 127.0.0.1, a loopback address"),
        ("http://2130706433/hook", "2130706433 resolves to 127.0.0.1, a loopback address"),
        ("http://0x7f.1/hook", "0x7f.1 resolves to 127.0.0.1, a loopback address"),
        ("http://017700000001/hook", "resolves to 127.0.0.1, a loopback address"),
        ("http://[::ffff:127.0.0.1]/hook", "(127.0.0.1) is a loopback address"),
        ("http://[::ffff:7f00:1]/hook", "(127.0.0.1) is a loopback address"),
        ("http://[::127.0.0.1]/hook", "(127.0.0.1) is a loopback address"),
        ("http://[64:ff9b::a00:5]/hook", "(10.0.0.5) is a private address"),
        ("http://[2002:a9fe:a9fe::]/hook", "(169.254.169.254) is a link-local address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://[fe80::1]/hook", "fe80::1 is a link-local address"),
        ("http://0.0.0.0:8000/hook", "0.0.0.0 is an unspecified address"),
        ("http://0/hook", "0 resolves to 0.0.0.0, an unspecified address"),
        ("http://[::]/hook", ":: is an unspecified address"),
        ("http://10.1.2.3/hook", "10.1.2.3 is a private address"),
        ("http://172.16.0.1/hook", "172.16.0.1 is a private address"),
        ("http://192.168.1.1/hook", "192.168.1.1 is a private address"),
        ("http://[fd00::1]/hook", "fd00::1 is a private address"),
        ("http://100.64.0.1/hook", "100.64.0.1 is a shared (100.64.0.0/10) address"),
        ("http://224.0.0.1/hook", "224.0.0.1 is a multicast address"),
        ("http://[ff02::1]/hook", "ff02::1 is a multicast address"),
        ("http://240.0.0.1/hook", "240.0.0.1 is a reserved address"),
        ("http://255.255.255.255/hook", "255.255.255.255 is a reserved address"),
        ("https://db.internal/hook", "db.internal resolves to 10.0.0.5, a private address"),
        ("https://DB.Internal./hook", "resolves to 10.0.0.5, a private address"),
        ("http://meta.internal/", "resolves to 169.254.169.254, a link-local address"),
    ],
)
async def test_registration_refuses_destinations_inside_in_every_spelling(
    data_dir: Path, names: dict[str, list[str]], url: str, why: str
) -> None:
    async with client(data_dir, nowhere("nats")) as api:
        answer = await register(api, url)
        assert answer.status_code == 422 == answer.json()["status"], answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["detail"].startswith("callback URL refused: ")
        assert why in answer.json()["detail"]
        assert (await api.get("/webhooks/sales/subscriptions")).json() == []


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://example.com:99999/hook", "port must be a number from 1 to 65535"),
        ("http://example.com:65536/hook", "port must be a number from 1 to 65535"),
        ("http://example.com:0/hook", "port must be a number from 1 to 65535"),
        ("http://example.com:http/hook", "port must be a number from 1 to 65535"),
        ("http://example.com/a\r\nX-Injected: 1", "no whitespace nor control character"),
        ("http://example.com/a\nb", "no whitespace nor control character"),
        ("http://example.com/a b", "no whitespace nor control character"),
        ("http://exa\tmple.com/", "no whitespace nor control character"),
        ("http://example.com/\x00", "no whitespace nor control character"),
        ("http://example.com/\x7f", "no whitespace nor control character"),
        ("http://example.com/\u2028", "no whitespace nor control character"),
        ("gopher://127.0.0.1:6379/_FLUSHALL", "must be http:// or https:// with a host"),
        ("file:///etc/passwd", "must be http:// or https:// with a host"),
    ],
)
async def test_registration_refuses_urls_no_request_can_be_made_of(
    data_dir: Path, url: str, why: str
) -> None:
    async with client(data_dir, nowhere("nats")) as api:
        answer = await register(api, url)
        assert answer.status_code == 422, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["detail"].startswith("body.url: Value error, ")
        assert why in answer.json()["detail"]
        assert (await api.get("/webhooks/sales/subscriptions")).json() == []


async def test_the_operator_setting_opens_named_hosts_and_networks(
    data_dir: Path, names: dict[str, list[str]]
) -> None:
    allow = ("127.0.0.1/32", "::1", "receiver.internal", "10.0.0.0/24")
    async with client(data_dir, nowhere("nats"), allow) as api:
        for url in (
            "http://127.0.0.1:8080/hook",
            "http://127.1:8080/hook",  # the OS resolver says 127.0.0.1
            "http://[::1]:8080/hook",
            "http://[::ffff:127.0.0.1]:8080/hook",  # mapped: judged as 127.0.0.1
            "http://localhost:8080/hook",  # 127.0.0.1 (and ::1, if the hosts file says)
            "http://receiver.internal:8080/hook",  # named: not even resolved
            "https://db.internal/hook",  # 10.0.0.5
        ):
            answer = await register(api, url)
            assert answer.status_code == 201, (url, answer.text)
        assert "receiver.internal" not in names["asked"]
        for url, why in (
            ("http://127.0.0.2/hook", "127.0.0.2 is a loopback address"),
            ("http://meta.internal/", "169.254.169.254, a link-local address"),
            ("http://10.0.1.5/", "10.0.1.5 is a private address"),
        ):
            answer = await register(api, url)
            assert answer.status_code == 422 and why in answer.json()["detail"], answer.text


def test_a_bad_setting_is_refused_at_start(data_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match="TOOLKIT_WEBHOOK_ALLOW: 'not a host!' is neither"):
        app(data_dir, nowhere("nats"), ("127.0.0.1", "not a host!"))


async def test_a_name_that_resolves_inside_at_delivery_is_refused_there(
    nats_server: EmbeddedServer,
    nc: Client,
    sales: Sales,
    data_dir: Path,
    names: dict[str, list[str]],
) -> None:
    """DNS rebinding: public when registered, loopback (where a receiver listens) when
    delivered. The delivery checks again, sends nothing, counts and parks."""
    hooks = Receiver()
    async with serving(hooks.app()) as receiver, client(data_dir, nats_server.url) as api:
        port = receiver.rpartition(":")[2]
        names["rebind.example"] = ["93.184.215.14"]  # public: registered
        assert (await register(api, f"http://rebind.example:{port}/hook")).status_code == 201
        names["rebind.example"] = ["93.184.215.14", "127.0.0.1"]  # one address inside
        place_orders(sales, 1, cancel_every=6)
        await relay_all(sales, nc)
        async with dispatching(nc, data_dir, allowed=(), max_attempts=2) as dispatcher:
            await wait_for(lambda: dispatcher.stats.parked == 1, within=10)
        (letter,) = (await api.get("/webhooks/sales/dead-letters")).json()
    assert hooks.calls == []
    assert letter["attempts"] == 2
    assert letter["reason"] == (
        "gave up after 2 attempts: refused: rebind.example resolves to 127.0.0.1, "
        "a loopback address"
    )


async def test_a_delivery_connects_to_the_address_checked_with_the_url_host(
    nats_server: EmbeddedServer,
    nc: Client,
    sales: Sales,
    data_dir: Path,
    names: dict[str, list[str]],
) -> None:
    """``hooks.example`` exists only in the stand-in resolver: the delivery reaches the
    receiver only by connecting to the address checked, with the URL's Host header."""
    hooks = Receiver()
    allow = ("127.0.0.1/32",)
    async with serving(hooks.app()) as receiver, client(data_dir, nats_server.url, allow) as api:
        port = receiver.rpartition(":")[2]
        names["hooks.example"] = ["127.0.0.1"]
        assert (await register(api, f"http://hooks.example:{port}/hook")).status_code == 201
        names["asked"].clear()
        place_orders(sales, 1, cancel_every=6)
        await relay_all(sales, nc)
        async with dispatching(nc, data_dir, allowed=allow) as dispatcher:
            await wait_for(lambda: dispatcher.stats.delivered == 1, within=10)
    (call,) = hooks.calls
    assert call.headers["host"] == f"hooks.example:{port}"
    assert names["asked"] == ["hooks.example"]  # resolved again at delivery


def pinned(url: str, address: str) -> httpx.Request:
    return destinations.pinned_request(
        httpx.AsyncClient(), url, ipaddress.ip_address(address), b"{}", {"x": "1"}
    )


def test_an_https_delivery_verifies_the_host_name_it_connects_for() -> None:
    """The request goes to the address checked; TLS names the host (SNI), and the
    certificate is verified against it (httpcore's ``sni_hostname``)."""
    request = pinned("https://hooks.example:8443/a?b=1", "93.184.215.14")
    assert str(request.url) == "https://93.184.215.14:8443/a?b=1"
    assert request.headers["host"] == "hooks.example:8443"
    assert request.extensions["sni_hostname"] == "hooks.example"
    request = pinned("http://hooks.example/a", "2001:4860::8888")
    assert str(request.url) == "http://[2001:4860::8888]/a"
    assert request.headers["host"] == "hooks.example"
    assert "sni_hostname" not in request.extensions


class Redirecting:
    """A receiver that redirects every delivery, with a body that must not be read back."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            self.paths.append(request.url.path)
            if request.url.path == "/hook":
                headers = {"location": f"{request.base_url}elsewhere"}
                return Response(b"INTERNAL-MARKER redirecting", 307, headers=headers)
            return Response(b"INTERNAL-MARKER from elsewhere", 500)

        return Starlette(routes=[Route("/{name}", hook, methods=["POST"])])


async def test_redirects_are_not_followed_and_dead_letters_keep_no_body(
    nats_server: EmbeddedServer,
    nc: Client,
    sales: Sales,
    data_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    redirecting, failing = Redirecting(), Receiver(failures=10**9, status=500)
    allow = ("127.0.0.1/32",)
    async with (
        serving(redirecting.app()) as moved,
        serving(failing.app()) as down,
        client(data_dir, nats_server.url, allow) as api,
    ):
        assert (await register(api, f"{moved}/hook")).status_code == 201
        assert (await register(api, f"{down}/hook")).status_code == 201
        place_orders(sales, 1, cancel_every=6)
        await relay_all(sales, nc)
        async with dispatching(nc, data_dir, allowed=allow, max_attempts=2) as dispatcher:
            await wait_for(lambda: dispatcher.stats.parked == 2, within=10)
        listed = await api.get("/webhooks/sales/dead-letters")
    assert redirecting.paths == ["/hook", "/hook"]  # never /elsewhere
    reasons = {letter["url"]: letter["reason"] for letter in listed.json()}
    assert reasons == {
        f"{moved}/hook": "gave up after 2 attempts: HTTP 307",
        f"{down}/hook": "gave up after 2 attempts: HTTP 500",
    }
    for text in (listed.text, caplog.text):
        assert "INTERNAL-MARKER" not in text and "down for maintenance" not in text


async def test_unsendable_urls_stored_before_count_their_attempts_and_are_parked(
    nats_server: EmbeddedServer,
    nc: Client,
    sales: Sales,
    data_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Subscriptions registered before the checks: each delivery raised inside the
    dispatcher, stayed leased and was tried again every half minute, forever."""
    bad = {
        "port": "http://127.0.0.1:99999/hook",
        "crlf": "http://127.0.0.1:9/a\r\nX-Injected: 1",
        "broken": "http://[::1/hook",
        "inside": "http://10.0.0.5/hook",
    }
    allow = ("127.0.0.1/32",)
    async with client(data_dir, nats_server.url, allow) as api:
        for name in bad:
            answer = await register(api, f"http://127.0.0.1:9/{name}")
            assert answer.status_code == 201, answer.text
        path = data_dir / "webhooks" / "sales.sqlite"
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            for name, url in bad.items():
                db.execute("UPDATE subscription SET url = ? WHERE url LIKE ?", (url, f"%/{name}"))
        place_orders(sales, 1, cancel_every=6)
        await relay_all(sales, nc)
        async with dispatching(nc, data_dir, allowed=allow, max_attempts=3) as dispatcher:
            await wait_for(lambda: dispatcher.stats.parked == 4, within=10)
        assert (dispatcher.stats.retried, dispatcher.stats.delivered) == (8, 0)
        letters = (await api.get("/webhooks/sales/dead-letters")).json()
    reasons = {letter["url"]: letter["reason"] for letter in letters}
    assert {letter["attempts"] for letter in letters} == {3}
    assert "port must be a number from 1 to 65535" in reasons[bad["port"]]
    assert "no whitespace nor control character" in reasons[bad["crlf"]]
    assert reasons[bad["broken"]].startswith("gave up after 3 attempts: refused: ")
    assert reasons[bad["inside"]] == (
        "gave up after 3 attempts: refused: 10.0.0.5 is a private address"
    )
    assert not [r for r in caplog.records if "attempt of" in r.getMessage()]  # none raised
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= logging.ERROR]
