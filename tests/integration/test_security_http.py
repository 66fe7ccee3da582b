"""The HTTP boundary against a stranger (issue 18): bodies over the limit are refused
before they are read, metric labels come from a closed set whatever a client sends, and
the documentation pages need nothing but the process itself."""

from __future__ import annotations

import random
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from contexts.system import system
from toolkit.config import Settings
from toolkit.http.app import create_app
from toolkit.http.docs import assets_directory
from toolkit.system import System, title_of

pytestmark = pytest.mark.timeout(60)

LIMIT = 4096


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("security"),
        nats_url="nats://127.0.0.1:1",  # nothing answers: the boundary alone is under test
        max_body=LIMIT,
    )
    return create_app(system, settings, relay=False)


@pytest.fixture
async def http(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield client


ROUTES = [
    ("POST", "/sales/orders"),  # a command
    ("POST", "/sales/customers"),
    ("POST", "/webhooks/sales/subscriptions"),  # a webhook subscription
    ("GET", "/shipping/shipments"),  # a read: a body is refused there too
    ("POST", "/nowhere"),  # no route at all
]


def assert_refused_as_too_large(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 413
    assert f"{LIMIT} bytes" in problem["detail"]


# -- case 4: the request body limit ---------------------------------------------------------


def test_the_limit_is_a_setting_of_one_mebibyte_by_default() -> None:
    assert Settings().max_body == 1 << 20
    assert Settings.from_env({"TOOLKIT_MAX_BODY": "2048"}).max_body == 2048


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_a_declared_length_over_the_limit_is_refused_before_a_byte_is_read(
    http: httpx.AsyncClient, method: str, path: str
) -> None:
    pulled = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(8):
            pulled += 1
            yield b" " * 1024

    response = await http.request(
        method,
        path,
        content=body(),
        headers={"content-type": "application/json", "content-length": str(8 * 1024)},
    )
    assert_refused_as_too_large(response)
    assert pulled == 0  # refused on the header: the body was never asked for


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_a_body_over_the_limit_is_refused_with_a_problem(
    http: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await http.request(
        method, path, content=b" " * (LIMIT + 1), headers={"content-type": "application/json"}
    )
    assert_refused_as_too_large(response)


@pytest.mark.parametrize(("method", "path"), ROUTES[:3])
async def test_a_chunked_body_is_refused_once_it_passes_the_limit_without_reading_it_all(
    http: httpx.AsyncClient, method: str, path: str
) -> None:
    chunk, chunks = 1000, 1000  # a megabyte offered, in chunks of unknown total length
    pulled = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(chunks):
            pulled += 1
            yield b" " * chunk

    response = await http.request(
        method, path, content=body(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers  # chunked: no length declared
    assert_refused_as_too_large(response)
    assert pulled == LIMIT // chunk + 1  # read up to the chunk that passed the limit, no more


async def test_a_body_at_the_limit_is_taken(http: httpx.AsyncClient) -> None:
    command = b'{"name": "Ann", "email": "a@x.org"}'
    padded = command + b" " * (LIMIT - len(command))  # JSON allows trailing whitespace
    assert len(padded) == LIMIT
    declared = await http.post(
        "/sales/customers", content=padded, headers={"content-type": "application/json"}
    )
    assert declared.status_code == 201, declared.text

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, LIMIT, 1000):
            yield padded[start : start + 1000]

    streamed = await http.post(
        "/sales/customers", content=chunked(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 201, streamed.text


# -- case 5: metric labels from a closed set -------------------------------------------------


def request_series(metrics: str) -> set[str]:
    return set(re.findall(r"^toolkit_http_request_seconds_count\{(.*)\} \S+$", metrics, re.M))


async def test_made_up_methods_and_paths_add_at_most_a_handful_of_series(
    http: httpx.AsyncClient,
) -> None:
    before = request_series((await http.get("/metrics")).text)
    rng = random.Random(18)
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    for n in range(1000):
        method = "".join(rng.choices(letters, k=rng.randint(3, 12)))
        if n % 4 == 0:
            method = rng.choice(["GET", "DELETE", "get", "PROPFIND"])
        token = "".join(rng.choices(letters + "0123456789-_", k=rng.randint(1, 30)))
        path = rng.choice(
            [f"/{token}", f"/shipping/shipments/{token}", f"/webhooks/{token}/dead-letters"]
        )
        response = await http.request(method, path)
        assert response.status_code < 500 or response.status_code == 503, response.text
    after = request_series((await http.get("/metrics")).text)
    added = after - before
    assert len(added) <= 12, sorted(added)
    methods = set(re.findall(r'method="([^"]*)"', "\n".join(after)))
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    routes = set(re.findall(r'route="([^"]*)"', "\n".join(added)))
    assert routes <= {
        "unmatched",
        "/shipping/shipments/{shipment_id}",
        "/webhooks/{context}/dead-letters",
        "/metrics",
    }, routes


# -- case 13: the documentation pages, offline, titled after the system ---------------------


@pytest.mark.parametrize(
    ("page", "assets"),
    [
        ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"}),
        ("/redoc", {"redoc.standalone.js", "favicon.png"}),
    ],
)
async def test_the_documentation_pages_load_only_local_assets(
    http: httpx.AsyncClient, page: str, assets: set[str]
) -> None:
    html = await http.get(page)
    assert html.status_code == 200
    assert "Sales, shipping and billing" in html.text
    referenced = set(re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text))
    assert referenced, html.text
    assert not re.search(r"https?://", html.text), html.text  # no CDN, no web font
    assert {url.rsplit("/", 1)[-1] for url in referenced} == assets
    for url in referenced:
        assert url.startswith("/docs/assets/"), url
        served = await http.get(url)
        assert served.status_code == 200, url
        installed = Path(assets_directory(), url.rsplit("/", 1)[-1]).read_bytes()
        assert served.content == installed


async def test_the_api_is_titled_after_the_system(http: httpx.AsyncClient) -> None:
    assert (await http.get("/openapi.json")).json()["info"]["title"] == system.title
    assert title_of(System(), "contexts.system:system") == "Contexts"
    assert title_of(System(), "shop.system:system") == "Shop"
    assert title_of(System(), "my_shop:system") == "My shop"
    assert title_of(System(title="Orders"), "shop.system:system") == "Orders"
