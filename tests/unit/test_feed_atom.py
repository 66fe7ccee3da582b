"""The feed's Atom document stays well-formed whatever a publisher put in an event, carries
each envelope byte for byte, and is stable for a page; the Accept header picks JSON or
Atom the way RFC 9110 says, and malformed or huge headers never fail."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Any

import feedparser  # type: ignore[import-untyped]  # no stubs, no py.typed
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from toolkit import wire
from toolkit.http import atom
from toolkit.http.negotiation import choose

pytestmark = pytest.mark.timeout(120)

LINKS: dict[str, str | None] = {
    "self": "/feed/sales?after=2&limit=2",
    "first": "/feed/sales?after=0&limit=2",
    "prev": "/feed/sales?after=0&limit=2",
    "next": None,
}
TIME = datetime(2026, 11, 24, 6, 43, 30, 123456, tzinfo=UTC)
A = "{http://www.w3.org/2005/Atom}"


def envelope(**fields: Any) -> bytes:
    attributes: dict[str, Any] = {
        "specversion": "1.0",
        "id": "sales:3",
        "source": "sales",
        "type": "sales.OrderPlaced",
        "schemaversion": 2,
        "subject": "o-1",
        "time": TIME,
        "aggregatetype": "order",
        "aggregateversion": 1,
        "logposition": 3,
        "datacontenttype": "application/json",
        "data": {"order_id": "o-1"},
    }
    return wire.encode_envelope(wire.Envelope(**(attributes | fields)))


def parsed(document: bytes) -> feedparser.FeedParserDict:
    """The document as feedparser reads it, once checked for what RFC 4287 requires
    (feedparser does not): well-formed XML 1.0, and the elements a feed and an entry
    must have, a summary included as the content is Base64 (4.1.1.1, 4.1.2, 4.1.3.3)."""
    root = ET.fromstring(document)  # expat: a well-formed XML 1.0 document, or this raises
    assert root.tag == f"{A}feed"
    for name in ("id", "title", "updated", "author/" + A + "name"):
        assert len(root.findall(A + name)) == 1, name
    for entry in root.findall(f"{A}entry"):
        for name in ("id", "title", "updated", "summary", "content"):
            assert len(entry.findall(A + name)) == 1, name
    feed = feedparser.parse(document)
    assert not feed.bozo, feed.get("bozo_exception")
    assert feed.version == "atom10"
    return feed


def carried(entry: feedparser.FeedParserDict) -> bytes:
    """The envelope in an entry's content, as a feed reader decodes it (Base64, RFC
    4287 4.1.3.3: feedparser decodes it, being application/json)."""
    value: str = entry.content[0].value
    return value.encode()


def test_a_page_as_atom_carries_each_envelope_exactly_with_its_links() -> None:
    bodies = [envelope(), envelope(id="sales:4", logposition=4, subject="o-2", time=TIME)]
    document = atom.document("sales", LINKS, bodies, created=None)
    feed = parsed(document)
    assert feed.feed.id == atom.urn("feed", "sales")
    assert feed.feed.updated == "2026-11-24T06:43:30.123456Z"
    assert feed.feed.author == "sales" and feed.feed.generator == "toolkit"
    links = {(link.rel, link.get("type")): link.href for link in feed.feed.links}
    assert links == {
        ("self", "application/atom+xml"): "/feed/sales?after=2&limit=2",
        ("first", "application/atom+xml"): "/feed/sales?after=0&limit=2",
        ("previous", "application/atom+xml"): "/feed/sales?after=0&limit=2",
        ("alternate", "application/json"): "/feed/sales?after=2&limit=2",
    }
    assert [carried(e) for e in feed.entries] == bodies
    raw = ET.fromstring(document).findall(f"{A}entry/{A}content")
    assert [base64.b64decode(content.text or "") for content in raw] == bodies
    first = feed.entries[0]
    assert first.id == atom.urn("event", "sales", "sales:3")
    assert first.title == "sales.OrderPlaced o-1"
    assert first.updated == "2026-11-24T06:43:30.123456Z"
    assert first.tags[0].term == "sales.OrderPlaced"
    assert first.tags[0].label == "sales.OrderPlaced version 2"
    assert first.summary == "sales.OrderPlaced version 2 of order o-1 (sales:3)"
    assert first.content[0].type == "application/json"
    assert len({e.id for e in feed.entries}) == 2
    assert atom.document("sales", LINKS, bodies, created=None) == document  # stable bytes


def test_an_empty_page_is_updated_at_the_streams_creation_or_the_epoch() -> None:
    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    empty = parsed(atom.document("sales", LINKS, [], created=created))
    assert empty.feed.updated == "2026-01-02T03:04:05Z" and empty.entries == []
    unborn = parsed(atom.document("sales", LINKS, [], created=None))
    assert unborn.feed.updated == "1970-01-01T00:00:00Z"


@pytest.mark.parametrize(
    "body",
    [
        b'{"specversion":"1.0","id":"sales:1","source":"sales","type":"t"}',  # no time, subject
        b'{"specversion":"1.0","id":"sales:1","source":"sales","type":"t","time":"yesterday"}',
        b'{"specversion":"1.0","id":"sales:1","source":"sales","type":"t","time":7,"subject":[]}',
        b'{"specversion":"1.0","id":"s:1","source":"s","type":"t","time":"2026-11-24T06:43:30"}',
    ],
)
def test_an_envelope_that_only_looks_like_the_relays_still_makes_a_valid_entry(
    body: bytes,
) -> None:
    feed = parsed(atom.document("sales", LINKS, [body], created=None))
    assert carried(feed.entries[0]) == body
    assert feed.entries[0].updated.endswith("Z")


HOSTILE = st.text(alphabet=st.characters(codec="utf-8"))  # every code point JSON can carry


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(kind=HOSTILE, subject=HOSTILE, aggregate=HOSTILE, id_=HOSTILE, source=HOSTILE, data=HOSTILE)
@example(kind="]]>", subject="<&>\x00\x1f", aggregate="\ufffe", id_="&amp;", source="'", data="]]>")
@example(
    kind="a\r\nb\rc", subject="\t\x7f\x80\uffff", aggregate="", id_="\U0010ffff", source="", data=""
)
def test_any_text_in_an_event_leaves_the_document_well_formed(
    kind: str, subject: str, aggregate: str, id_: str, source: str, data: str
) -> None:
    body = envelope(
        type=kind, subject=subject, aggregatetype=aggregate, id=id_, source=source, data=data
    )
    document = atom.document(source, LINKS, [body], created=None)
    assert len(parsed(document).entries) == 1
    entry = ET.fromstring(document).find(f"{A}entry")
    assert entry is not None
    # the bytes from the XML itself: feedparser reads C1 controls as windows-1252
    assert base64.b64decode(entry.findtext(f"{A}content") or "") == body
    assert entry.findtext(f"{A}title") == atom.xml_text(f"{kind} {subject}")


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, "application/json"),
        ("", "application/json"),
        ("*/*", "application/json"),
        ("application/*", "application/json"),
        ("application/atom+xml", "application/atom+xml"),
        ("application/atom+xml;type=feed", "application/atom+xml"),
        ("APPLICATION/Atom+XML ; Q=1", "application/atom+xml"),
        ("application/json, application/atom+xml", "application/json"),  # a tie: the default
        ("application/json;q=0.5, application/atom+xml", "application/atom+xml"),
        ("application/atom+xml;q=0.9, */*;q=0.8", "application/atom+xml"),
        ("*/*;q=0.8, application/json;q=0", "application/atom+xml"),  # specific range wins
        ("application/*;q=0, application/atom+xml", "application/atom+xml"),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "application/json"),
        ("text/html", None),
        ("application/xml", None),  # Atom's type is application/atom+xml, not this
        ("application/json;q=0, application/atom+xml;q=0", None),
        ("*/*;q=0", None),
        ("application/atom+xml;q=2, text/html", None),  # a malformed q drops its range
        ("application/atom+xml;q=abc", "application/json"),  # ... and nothing is left
        ("garbage", "application/json"),
        (";;;,,,/", "application/json"),
        ("application/atom+xml;q=0.001", "application/atom+xml"),
        ("application/atom+xml;quux=1", "application/atom+xml"),
    ],
)
def test_accept_chooses_json_or_atom(accept: str | None, chosen: str | None) -> None:
    assert choose(accept, ("application/json", "application/atom+xml")) == chosen


def test_a_huge_accept_header_is_read_in_linear_time() -> None:
    huge = ", ".join(f"text/x-{i};q=0.{i % 1000:03d}" for i in range(50_000))
    assert choose(huge + ", application/atom+xml", ("application/json", atom.MEDIA_TYPE)) == (
        atom.MEDIA_TYPE
    )
    assert choose(huge, ("application/json", atom.MEDIA_TYPE)) is None
    assert choose("," * 100_000, ("application/json", atom.MEDIA_TYPE)) == "application/json"


@given(st.text())
def test_no_accept_header_makes_the_choice_fail(accept: str) -> None:
    assert choose(accept, ("application/json", atom.MEDIA_TYPE)) in (
        None,
        "application/json",
        atom.MEDIA_TYPE,
    )
