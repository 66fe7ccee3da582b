"""The event feed over a real uvicorn server: pages chain from the first to the head and
hold exactly the stream's events, in order; complete pages are immutable and answer 304
to their ETag; the head page grows until it is complete; bad input gets problem details.
The same pages as Atom (by Accept) read as a feed reader reads them, with the same
envelopes, links and caching, and tags of their own."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import feedparser  # type: ignore[import-untyped]  # no stubs, no py.typed
import httpx
import orjson
import pytest
from nats.aio.client import Client

from contexts.sales import Sales
from contexts.system import system
from tests.conftest import serving
from tests.envelopes import relayed
from tests.flow import place_orders, read_all, relay_all
from toolkit import StreamSpec, ensure_stream
from toolkit.config import Settings
from toolkit.http.app import create_app
from toolkit.http.feed import IMMUTABLE, Feed, FeedPage, NatsLink
from toolkit.nats.embedded import EmbeddedServer


@pytest.fixture
async def feed(nats_server: EmbeddedServer, data_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The example system's API on a free port, reading the test's NATS server."""
    app = create_app(system, Settings(nats_url=nats_server.url, data_dir=data_dir), relay=False)
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as http:
        yield http


@pytest.fixture
def log_env() -> dict[str, str]:
    return {}  # the sales fixture on a SQLite log: the log's kind is not the subject here


def link(response: httpx.Response, rel: str) -> str | None:
    """A link from the Link header, checked against the same link in the body."""
    header = response.links.get(rel, {}).get("url")
    assert header == response.json()["links"][rel]
    return header


async def follow(
    feed: httpx.AsyncClient,
    url: str | None,
    onward: Callable[[httpx.Response], str | None],
    headers: dict[str, str] | None = None,
) -> list[httpx.Response]:
    """The pages from ``url`` on, each page's next found by ``onward``, up to the head."""
    pages = []
    while url is not None:
        page = await feed.get(url, headers=headers)
        pages.append(page)
        url = onward(page)
    return pages


async def test_pages_chain_from_the_first_to_the_head_with_exactly_the_streams_events(
    sales: Sales, nc: Client, feed: httpx.AsyncClient
) -> None:
    place_orders(sales, 300, cancel_every=7)  # 1 customer, 300 orders, 43 cancellations: 344 events
    head = await relay_all(sales, nc)
    assert head == 344

    def onward(page: httpx.Response) -> str | None:
        assert page.status_code == 200, page.text
        FeedPage.model_validate(page.json())  # the documented shape, in the OpenAPI schema
        return link(page, "next")

    pages = await follow(feed, "/feed/sales?limit=50", onward)
    assert len(pages) == 7  # six complete pages of 50, then the head page

    entries = [entry for page in pages for entry in page.json()["events"]]
    stream = await read_all(nc)
    assert [e["position"] for e in entries] == [m.sequence for m in stream] == list(range(1, 345))
    assert [e["subject"] for e in entries] == [m.subject for m in stream]
    assert [e["event"] for e in entries] == [orjson.loads(m.data) for m in stream]
    positions = [e["event"]["logposition"] for e in entries]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)

    *complete, last = pages
    for page in complete:
        assert page.json()["complete"] is True
        assert page.headers["cache-control"] == IMMUTABLE
        again = await feed.get(page.url, headers={"If-None-Match": page.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
        assert again.headers["etag"] == page.headers["etag"]
        assert again.headers["cache-control"] == IMMUTABLE
    assert last.json()["complete"] is False and last.json()["links"]["next"] is None
    assert last.headers["cache-control"] == "public, max-age=1"
    assert last.json()["events"][-1]["position"] == head

    # Backwards from the head, prev links visit the same pages.
    url = str(last.url.copy_with(scheme=None, host=None, port=None))
    back = await follow(feed, url, lambda page: link(page, "prev"))
    positions = [e["position"] for page in reversed(back) for e in page.json()["events"]]
    assert positions == list(range(1, 345))


async def test_the_head_page_grows_until_complete_then_links_onward(
    sales: Sales, nc: Client, feed: httpx.AsyncClient
) -> None:
    place_orders(sales, 4, cancel_every=7)  # 1 customer, 4 orders, 1 cancellation
    await relay_all(sales, nc)
    first = await feed.get("/feed/sales", params={"limit": 10})
    assert [e["position"] for e in first.json()["events"]] == [1, 2, 3, 4, 5, 6]
    assert first.json()["complete"] is False and "next" not in first.links
    polled = await feed.get(first.url, headers={"If-None-Match": first.headers["etag"]})
    assert polled.status_code == 304  # nothing new: the poller's copy is current

    place_orders(sales, 6, cancel_every=7)  # 1 + 6 + 1 more: 14 events
    await relay_all(sales, nc)
    grown = await feed.get(first.url, headers={"If-None-Match": first.headers["etag"]})
    assert grown.status_code == 200 and grown.headers["etag"] != first.headers["etag"]
    assert grown.json()["complete"] is True and grown.headers["cache-control"] == IMMUTABLE
    assert [e["position"] for e in grown.json()["events"]] == list(range(1, 11))
    nxt = await feed.get(link(grown, "next") or "")
    assert [e["position"] for e in nxt.json()["events"]] == [11, 12, 13, 14]
    assert nxt.json()["links"]["prev"] == "/feed/sales?after=0&limit=10"

    # A page at the head with nothing in it yet is a valid place to wait.
    at_head = await feed.get("/feed/sales", params={"after": 14, "limit": 10})
    assert at_head.status_code == 200 and at_head.json()["events"] == []


async def test_the_head_page_is_read_from_the_stream_once_a_head(
    sales: Sales, nc: Client, nats_server: EmbeddedServer, data_dir: Path
) -> None:
    """Polled, the head page is built once until the head moves (an Atom page of 1,000
    costs some 25 ms of the event loop), and never answered stale after it moved."""
    place_orders(sales, 2, cancel_every=7)
    await relay_all(sales, nc)
    link = NatsLink(Settings(nats_url=nats_server.url, data_dir=data_dir))
    pages = Feed(link)
    reads: list[tuple[int, int]] = []
    read = pages._read

    async def counted(client: Client, stream: str, first: int, last: int) -> Any:
        reads.append((first, last))
        return await read(client, stream, first, last)

    pages._read = counted  # type: ignore[method-assign]
    try:
        for media_type in ("application/json", "application/atom+xml"):
            head = await pages.page("sales", 0, 10, "/feed/sales", media_type)
            assert not head.complete
            assert await pages.page("sales", 0, 10, "/feed/sales", media_type) is head
        (first, last), again = reads
        assert (first, last) == again == (1, last) and last < 10  # once a representation

        place_orders(sales, 1, cancel_every=7)
        await relay_all(sales, nc)
        grown = await pages.page("sales", 0, 10, "/feed/sales")
        (_, now), *_ = reversed(reads)
        assert len(reads) == 3 and last < now < 10 and grown.etag != head.etag
        assert [e["position"] for e in orjson.loads(grown.body)["events"]] == [*range(1, now + 1)]
    finally:
        await link.close()


async def test_a_recreated_stream_is_never_answered_from_cached_pages(
    nc: Client, feed: httpx.AsyncClient
) -> None:
    js = nc.jetstream()

    async def fill(tag: str, count: int) -> None:
        await ensure_stream(js, StreamSpec("sales"))
        for i in range(count):
            subject, body, headers = relayed("sales", i + 1, tag, {}, aggregate_id=str(i))
            await js.publish(subject, body, headers=headers)

    await fill("old", 12)
    before = await feed.get("/feed/sales", params={"limit": 10})
    assert before.json()["complete"] is True
    assert {e["event"]["type"] for e in before.json()["events"]} == {"old"}

    await js.delete_stream("sales")
    await fill("new", 12)
    after = await feed.get("/feed/sales", params={"limit": 10})
    assert {e["event"]["type"] for e in after.json()["events"]} == {"new"}
    assert after.headers["etag"] != before.headers["etag"]


async def test_a_message_that_is_not_an_event_keeps_its_place_and_says_why(
    nc: Client, feed: httpx.AsyncClient
) -> None:
    js = nc.jetstream()
    await ensure_stream(js, StreamSpec("sales"))
    subject, good, headers = relayed("sales", 1, "sales.X", {}, aggregate_id="a")
    await js.publish(subject, good, headers=headers)
    await js.publish("sales.order.b.X", b"\xff not json")
    await js.publish("sales.order.c.X", b'{"type": "no specversion"}')
    # Another publisher's copy of the relay's event, under an id it never used: a reader
    # that keys on the envelope's id must not be handed it as sales:1.
    await js.publish(subject, good, headers={"Nats-Msg-Id": "someone:1"})
    page = (await feed.get("/feed/sales")).json()
    assert [(e["position"], e["event"] is None) for e in page["events"]] == [
        (1, False),
        (2, True),
        (3, True),
        (4, True),
    ]
    assert page["events"][1]["problem"].startswith("not a CloudEvents event: ")
    assert "specversion" in page["events"][2]["problem"]
    assert page["events"][3]["problem"].startswith("not published by the sales relay: ")


@pytest.mark.parametrize(
    ("query", "status", "detail"),
    [
        ("after=-1", 422, "query.after"),
        ("after=abc", 422, "query.after"),
        ("after=1e3", 422, "query.after"),
        ("limit=0", 422, "query.limit"),
        ("limit=1001", 422, "query.limit"),
        ("limit=ten", 422, "query.limit"),
        ("after=99", 404, "position 99 is beyond the head of sales (3)"),
        ("cursor=5", 400, "unknown query parameter 'cursor' (known: after, limit)"),
    ],
)
async def test_bad_positions_and_limits_get_problem_details(
    nc: Client, feed: httpx.AsyncClient, query: str, status: int, detail: str
) -> None:
    await ensure_stream(nc.jetstream(), StreamSpec("sales"))
    for i in range(3):
        await nc.jetstream().publish(f"sales.order.{i}.X", b"{}")
    answer = await feed.get(f"/feed/sales?{query}")
    problem: dict[str, Any] = answer.json()
    assert answer.status_code == status == problem["status"]
    assert answer.headers["content-type"] == "application/problem+json"
    assert detail in problem["detail"]


async def test_an_unknown_context_is_not_found(feed: httpx.AsyncClient) -> None:
    answer = await feed.get("/feed/warehouse")
    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["detail"] == (
        "no feed for context 'warehouse' (known: billing, sales, shipping)"
    )


async def test_without_nats_the_feed_answers_503_with_retry_after(data_dir: Path) -> None:
    with socket.socket() as s:  # a free port nothing listens on
        s.bind(("127.0.0.1", 0))
        nowhere = f"nats://127.0.0.1:{s.getsockname()[1]}"
    app = create_app(system, Settings(nats_url=nowhere, data_dir=data_dir), relay=False)
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as http:
        answer = await http.get("/feed/sales")
    assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["detail"].startswith("cannot connect to NATS at nats://127.0.0.1:")


ATOM = {"Accept": "application/atom+xml"}


def atom_page(response: httpx.Response) -> feedparser.FeedParserDict:
    """An Atom page as a feed reader reads it: well-formed, valid enough that feedparser
    has nothing to say (bozo false), with the same links in the body and the headers."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/atom+xml"
    assert response.headers["vary"] == "Accept"
    parsed = feedparser.parse(response.content)
    assert not parsed.bozo, parsed.get("bozo_exception")
    assert parsed.version == "atom10"
    links = {link.rel: link.href for link in parsed.feed.links if link.rel != "alternate"}
    expected = {"previous" if rel == "prev" else rel: v["url"] for rel, v in response.links.items()}
    assert links == expected
    return parsed


def atom_next(page: httpx.Response) -> str | None:
    return next((ln.href for ln in atom_page(page).feed.links if ln.rel == "next"), None)


async def test_the_atom_feed_pages_like_the_json_feed_with_its_own_etags(
    sales: Sales, nc: Client, feed: httpx.AsyncClient
) -> None:
    place_orders(sales, 60, cancel_every=7)
    assert (head := await relay_all(sales, nc)) == 70  # 1 customer, 60 orders, 9 cancellations
    pages = await follow(feed, "/feed/sales?limit=20", atom_next, ATOM)
    assert len(pages) == 4  # three complete pages of 20, then the head page

    entries = [entry for page in pages for entry in atom_page(page).entries]
    stream = await read_all(nc)
    assert [entry.content[0].value.encode() for entry in entries] == [m.data for m in stream]
    assert len({entry.id for entry in entries}) == head

    *complete, last = pages
    for page in complete:
        as_json = await feed.get(page.url)
        assert as_json.headers["vary"] == "Accept"
        assert as_json.headers["link"] == page.headers["link"]
        assert as_json.headers["etag"] != page.headers["etag"]
        for response, accept in ((page, ATOM), (as_json, {})):
            assert response.headers["cache-control"] == IMMUTABLE
            tag = response.headers["etag"]
            again = await feed.get(page.url, headers={**accept, "If-None-Match": tag})
            assert again.status_code == 304 and again.content == b""
            assert again.headers["etag"] == tag and again.headers["vary"] == "Accept"
        # the other representation's tag does not match this one
        crossed = await feed.get(
            page.url, headers={**ATOM, "If-None-Match": as_json.headers["etag"]}
        )
        assert crossed.status_code == 200 and crossed.content == page.content
    assert last.headers["cache-control"] == "public, max-age=1"
    polled = await feed.get(last.url, headers={**ATOM, "If-None-Match": last.headers["etag"]})
    assert polled.status_code == 304

    place_orders(sales, 1)  # the head page grows: a new tag, the same page number
    grown_head = await relay_all(sales, nc)
    grown = await feed.get(last.url, headers={**ATOM, "If-None-Match": last.headers["etag"]})
    assert grown.status_code == 200 and grown.headers["etag"] != last.headers["etag"]
    assert len(atom_page(grown).entries) == grown_head - 60 > len(atom_page(last).entries)


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        ("text/html", None),
        ("application/xml, text/plain;q=0.5", None),
        ("application/json;q=0, application/atom+xml;q=0", None),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "application/json"),
        ("application/atom+xml;q=0.9, application/json;q=0.8", "application/atom+xml"),
        ("application/atom+xml;q=nonsense", "application/json"),  # nothing well-formed
        (", ".join(["text/x-unknown;q=0.5"] * 400) + ", application/*", "application/json"),
        (", ".join(["text/x-unknown;q=0.5"] * 400), None),
    ],
)
async def test_accept_picks_the_representation_or_gets_406(
    nc: Client, feed: httpx.AsyncClient, accept: str, media_type: str | None
) -> None:
    await ensure_stream(nc.jetstream(), StreamSpec("sales"))
    answer = await feed.get("/feed/sales", headers={"Accept": accept})
    assert answer.headers["vary"] == "Accept"
    if media_type is None:
        assert answer.status_code == 406
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["detail"] == (
            "the feed is served as application/json or application/atom+xml: Accept allows neither"
        )
    else:
        assert answer.status_code == 200 and answer.headers["content-type"] == media_type


async def test_the_openapi_schema_documents_both_representations(feed: httpx.AsyncClient) -> None:
    schema = (await feed.get("/openapi.json")).json()
    responses = schema["paths"]["/feed/{context}"]["get"]["responses"]
    assert set(responses["200"]["content"]) == {"application/json", "application/atom+xml"}
    assert responses["406"]["content"] == {
        "application/problem+json": {"schema": {"type": "object"}}
    }
