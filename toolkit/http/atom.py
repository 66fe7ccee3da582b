"""A page of the event feed as an Atom feed document (RFC 4287), for feed readers and
libraries that speak Atom rather than the feed's JSON.

The page is the JSON page's: same positions, same links (RFC 5005 paged-feed relations:
``first``, ``previous``, ``next``, and ``self``; plus ``alternate`` to the JSON
representation at the same URL). Ids are ``urn:uuid:`` URIs, name-based (UUIDv5) under
:data:`NAMESPACE`: the feed's from its context's name, an entry's from its envelope's
``source`` and ``id``, so they are as stable and as unique as those. An entry's
``updated`` is its event's ``time``; the feed's is its latest entry's, or on a page
without entries the stream's creation time: a complete page's document, and so its
ETag, never changes.

Each entry's ``content`` is the CloudEvents envelope exactly as on the stream, in
``type="application/json"``, which RFC 4287 (4.1.3.3) requires to be Base64: the bytes
are passed on untouched, and nothing a publisher put in an event can break the XML. The
few other texts taken from events (type and subject, in ``title``, ``summary`` and
``category``) have the characters XML 1.0 forbids (control characters, U+FFFE, U+FFFF;
lone surrogates too, though msgspec refuses to decode them) replaced by U+FFFD.
Messages that are not the context's events (``null`` in the JSON page, with the reason)
have no entry: Atom has nothing to carry them as.

The document is built with :mod:`xml.etree.ElementTree`, never by joining strings.
"""

from __future__ import annotations

import base64
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import msgspec

MEDIA_TYPE = "application/atom+xml"
NAMESPACE = uuid.UUID("5f1c2a4e-8b3d-4c6e-9a7f-0d2e4b6c8a1f")
"""The UUIDv5 namespace of the feed's ids (fixed: changing it changes every id)."""
XMLNS = "http://www.w3.org/2005/Atom"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
"""A page's ``updated`` when it has no entry and its stream does not exist yet."""
_LINK_RELATIONS = {"self": "self", "first": "first", "prev": "previous", "next": "next"}
_FORBIDDEN = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class _Attributes(msgspec.Struct):
    """What an entry shows of its envelope besides the envelope itself; anything may be
    missing or of another type in a message that only looks like the relay's."""

    id: Any = None
    source: Any = None
    type: Any = None
    schemaversion: Any = None
    subject: Any = None
    aggregatetype: Any = None
    time: Any = None


_decode = msgspec.json.Decoder(_Attributes).decode


def xml_text(value: object) -> str:
    """``value`` as text XML 1.0 can hold: forbidden characters become U+FFFD, and line
    ends line feeds (as any XML parser would read a carriage return in text)."""
    text = value if isinstance(value, str) else str(value)
    return _FORBIDDEN.sub("\ufffd", text.replace("\r\n", "\n").replace("\r", "\n"))


def urn(*names: str) -> str:
    """The stable ``urn:uuid:`` of a feed or entry named by ``names``."""
    return f"urn:uuid:{uuid.uuid5(NAMESPACE, msgspec.json.encode(names).decode())}"


def _time(value: object) -> datetime | None:
    """An envelope's ``time`` (RFC 3339) as an aware datetime, or None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _add(parent: ET.Element, tag: str, text: str | None = None, **attributes: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attributes)
    element.text = text
    return element


def document(
    context: str,
    links: dict[str, str | None],
    envelopes: Iterable[bytes],
    *,
    created: datetime | None,
) -> bytes:
    """The Atom document of a page: ``links`` as the JSON page's (``self``, ``first``,
    ``prev``, ``next``; None where there is none), ``envelopes`` the page's events as
    on the stream, oldest first; ``created`` the stream's creation time, if it exists."""
    feed = ET.Element("feed", xmlns=XMLNS)
    _add(feed, "id", urn("feed", context))
    _add(feed, "title", xml_text(f"{context} integration events"))
    updated = _add(feed, "updated")
    _add(_add(feed, "author"), "name", xml_text(context))
    _add(feed, "generator", "toolkit")
    for relation, target in links.items():
        if target is not None:
            _add(feed, "link", rel=_LINK_RELATIONS[relation], type=MEDIA_TYPE, href=target)
    _add(feed, "link", rel="alternate", type="application/json", href=links["self"] or "")
    latest: datetime | None = None
    for body in envelopes:
        event = _decode(body)
        moment = _time(event.time) or created or EPOCH
        latest = moment if latest is None else max(latest, moment)
        kind, subject = xml_text(event.type), xml_text(event.subject)
        entry = _add(feed, "entry")
        _add(entry, "id", urn("event", str(event.source), str(event.id)))
        _add(entry, "title", f"{kind} {subject}")
        _add(entry, "updated", _rfc3339(moment))
        version = xml_text(event.schemaversion)
        _add(entry, "category", term=kind, label=f"{kind} version {version}")
        about = f"{kind} version {version} of {xml_text(event.aggregatetype)} {subject}"
        _add(entry, "summary", f"{about} ({xml_text(event.id)})")
        _add(entry, "content", base64.b64encode(body).decode(), type="application/json")
    updated.text = _rfc3339(latest or created or EPOCH)
    written: bytes = ET.tostring(feed, encoding="utf-8", xml_declaration=True)
    return written
