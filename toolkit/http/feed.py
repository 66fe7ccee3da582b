"""An event feed per context for consumers that speak only HTTP.

``GET /feed/<context>?after=P&limit=L`` is the page of the context's integration events
at stream positions ``P+1 .. P+L``, each as its CloudEvents envelope, exactly as on the
stream. Pages are ranges of positions, not counts of events, so a page is known to be
complete, and never to change again, as soon as the stream's head has reached its last
position: complete pages are served ``Cache-Control: public, max-age=31536000,
immutable`` and can sit in any cache for a year. The page that holds the head (the only
one that can still grow) is cacheable for a second or so, and a poller that sends its
``ETag`` back in ``If-None-Match`` gets 304 until something new arrives. Pages link to
each other (``Link`` headers and ``links`` in the body): ``next`` only from a complete
page, so following ``next`` from the first page ends at the head, and polling that page
is how a consumer waits for more.

Events are read with a short-lived ephemeral consumer (:class:`~toolkit.read.reader.StreamReader`)
from the page's first position; pages are also kept in a small in-process cache, keyed by
the stream's identity (creation time, first sequence, deletions), so that a purged or
recreated stream is never answered from stale pages, and the head page also by the head.
The body is encoded by msgspec with the envelopes spliced in as raw JSON, never decoded
and encoded again.

The same URL serves each page as an Atom feed document too (:mod:`toolkit.http.atom`)
to a client whose ``Accept`` prefers ``application/atom+xml``; JSON when both are equal
or ``Accept`` is absent, 406 when it allows neither (:mod:`toolkit.http.negotiation`).
Same links, same caching, an ETag of its own, and ``Vary: Accept`` on both.
"""

import asyncio
import contextlib
import hashlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from typing import Annotated, Any

import msgspec
import nats.errors
from fastapi import APIRouter, HTTPException, Query, Request, Response
from nats.aio.client import Client
from nats.js.errors import NotFoundError
from pydantic import BaseModel, ConfigDict, Field, RootModel
from pydantic.functional_validators import PlainValidator
from pydantic.json_schema import WithJsonSchema

from toolkit import wire
from toolkit.config import Settings
from toolkit.errors import ToolkitError
from toolkit.http import atom, negotiation, problems
from toolkit.nats.connection import Connection, open_nats
from toolkit.nats.imports import jetstream
from toolkit.read.reader import StreamMessage, StreamReader

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
IMMUTABLE = "public, max-age=31536000, immutable"
"""Cache-Control of a complete page: a year, and no revalidation on reload."""
JSON = "application/json"
MEDIA_TYPES = (JSON, atom.MEDIA_TYPE)
"""The page's representations, the default first."""
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {
        "description": description,
        "content": {"application/problem+json": {"schema": {"type": "object"}}},
    }
    for status, description in (
        (400, "an unknown query parameter"),
        (404, "an unknown context, or a position beyond the stream's head"),
        (406, "an Accept header that allows neither JSON nor Atom"),
        (422, "a malformed or out-of-range position or limit"),
        (503, "NATS cannot be reached (with Retry-After)"),
    )
}


class NatsLink:
    """The API's connection to NATS, opened on first use (an API that serves only read
    models never needs one), shared by the feed and webhook endpoints, closed with the
    app. ``settings.nats_url`` or, without one, the embedded server of the data folder.
    A client the server closed is replaced (:class:`~toolkit.nats.connection.Connection`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._connection: Connection | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._lock = asyncio.Lock()

    async def connection(self) -> Connection:
        if self._connection is None:
            async with self._lock:
                if self._connection is None:
                    stack = contextlib.AsyncExitStack()
                    try:
                        link = await stack.enter_async_context(
                            open_nats(self.settings, name="toolkit-api")
                        )
                    except ToolkitError as exc:
                        await stack.aclose()
                        raise unavailable(str(exc)) from None
                    self._stack, self._connection = stack, link.connection
        return self._connection

    async def client(self) -> Client:
        """The current client (one being replaced is waited for, a few seconds at most)."""
        return await (await self.connection()).current()

    @property
    def trouble(self) -> str | None:
        """Why the link cannot be used right now, once opened (see Connection.trouble)."""
        return None if self._connection is None else self._connection.trouble

    async def close(self) -> None:
        stack, self._stack, self._connection = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    @contextlib.asynccontextmanager
    async def lifespan(self, _: object) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await self.close()


def unavailable(detail: str) -> HTTPException:
    return HTTPException(503, detail, headers={"Retry-After": "5"})


# -- the page's documented shape (OpenAPI); the body itself is encoded by msgspec ---------


def _as_envelope(value: object) -> wire.Envelope:
    return msgspec.convert(value, wire.Envelope, strict=False)


class CloudEvent(
    RootModel[
        Annotated[
            wire.Envelope,
            PlainValidator(_as_envelope),
            WithJsonSchema(
                wire.envelope_json_schema()
                | {
                    "title": "CloudEvent",
                    "description": "An integration event in CloudEvents 1.0 JSON, exactly as on "
                    "the stream (see the README's wire format); attributes not listed here may "
                    "appear and should be ignored.",
                }
            ),
        ]
    ]
):
    """The wire package's envelope (:class:`toolkit.wire.Envelope`), as the OpenAPI
    schema shows it: the feed passes envelopes on unchanged, so it has no shape of its own."""


class FeedEntry(BaseModel):
    position: int = Field(description="the event's stream sequence: resume with `after=`")
    subject: str = Field(description="the NATS subject it was published on")
    event: CloudEvent | None = Field(description="null when the message is not an envelope")
    problem: str | None = Field(None, description="why `event` is null (only then present)")


class FeedLinks(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    self_: str = Field(alias="self")
    first: str
    prev: str | None = Field(description="the page before; null on the first page")
    next: str | None = Field(description="the page after; null until this page is complete")


class FeedPage(BaseModel):
    context: str
    after: int = Field(description="the page holds positions after+1 .. after+limit")
    limit: int
    complete: bool = Field(description="true when the page is full and will never change")
    events: list[FeedEntry]
    links: FeedLinks


class _Entry(msgspec.Struct, omit_defaults=True):
    position: int
    subject: str
    event: msgspec.Raw | None
    problem: str | None = None


class _PageBody(msgspec.Struct):
    context: str
    after: int
    limit: int
    complete: bool
    events: list[_Entry]
    links: dict[str, str | None]


_encode = msgspec.json.Encoder().encode


def _entry(message: StreamMessage) -> _Entry:
    """The message as a feed entry; one the stream's relay did not publish keeps its place
    but not its body, so that a reader that keys on ``id`` is never handed another
    publisher's message as one of the context's events."""
    try:
        envelope = wire.decode_attributes(message.data)
    except msgspec.DecodeError as exc:
        return _Entry(message.sequence, message.subject, None, f"not a CloudEvents event: {exc}")
    stream = message.stream
    position = wire.relay_position(
        stream, message.headers.get(wire.MSG_ID), envelope.source, envelope.id, envelope.logposition
    )
    if isinstance(position, str):
        why = f"not published by the {stream} relay: {position}"
        return _Entry(message.sequence, message.subject, None, why)
    return _Entry(message.sequence, message.subject, msgspec.Raw(message.data))


def etag_of(body: bytes) -> str:
    return f'"{hashlib.blake2b(body, digest_size=16).hexdigest()}"'


class EncodedPage(msgspec.Struct, frozen=True):
    """A page of the feed as served: its encoded body, and what its headers say."""

    body: bytes
    etag: str
    complete: bool
    links: dict[str, str | None]


class _PageCache:
    """Complete pages, least recently used first out, within a byte budget."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._pages: OrderedDict[tuple[object, ...], EncodedPage] = OrderedDict()

    def get(self, key: tuple[object, ...]) -> EncodedPage | None:
        page = self._pages.get(key)
        if page is not None:
            self._pages.move_to_end(key)
        return page

    def put(self, key: tuple[object, ...], page: EncodedPage) -> None:
        if len(page.body) > self.max_bytes or key in self._pages:
            return
        self._pages[key] = page
        self.size += len(page.body)
        while self.size > self.max_bytes:
            _, old = self._pages.popitem(last=False)
            self.size -= len(old.body)


class Feed:
    """Builds the pages of contexts' streams (one stream per context, named after it)."""

    def __init__(
        self,
        nats: NatsLink,
        *,
        head_max_age: int = 1,
        cache_bytes: int = 32 << 20,
        read_timeout: float = 10.0,
    ) -> None:
        self.nats = nats
        self.head_max_age = head_max_age
        self.read_timeout = read_timeout
        self._cache = _PageCache(cache_bytes)

    def cache_control(self, page: EncodedPage) -> str:
        return IMMUTABLE if page.complete else f"public, max-age={self.head_max_age}"

    async def page(
        self, stream: str, after: int, limit: int, path: str, media_type: str = JSON
    ) -> EncodedPage:
        """The page of ``stream`` after position ``after`` as ``media_type`` (one of
        :data:`MEDIA_TYPES`); ``path`` is the feed's URL path, from which the links are
        made."""
        client = await self.nats.client()
        key: tuple[object, ...] | None
        try:
            info = await jetstream(client).stream_info(stream)
        except NotFoundError:
            head, oldest, key, created = 0, 1, None, None  # nothing yet: an empty head page
        except (nats.errors.Error, TimeoutError) as exc:
            raise unavailable(f"cannot read stream {stream}: {type(exc).__name__}") from None
        else:
            state = info.state
            head, oldest, created = state.last_seq, state.first_seq, info.created
            identity = (stream, created, state.first_seq, state.num_deleted)
            key = (path, media_type, *identity, after, limit)
        if after > head:
            raise HTTPException(
                404, f"position {after} is beyond the head of {stream} ({head}): no such page yet"
            )
        end = after + limit
        complete = head >= end
        # A complete page never changes; the head page is the same until the head moves
        # (what it holds is fixed by the stream's identity and head): polled, it is built
        # once a head, not once a request (an Atom page of 1,000 takes some 25 ms).
        if key is not None and not complete:
            key = (*key, head)
        if key is not None and (cached := self._cache.get(key)) is not None:
            return cached
        first = max(after + 1, oldest)
        last = min(end, head)
        messages = await self._read(client, stream, first, last) if first <= last else []
        page = self._build(stream, after, limit, complete, messages, path, media_type, created)
        if key is not None:
            self._cache.put(key, page)
        return page

    def _build(
        self,
        context: str,
        after: int,
        limit: int,
        complete: bool,
        messages: list[StreamMessage],
        path: str,
        media_type: str = JSON,
        created: datetime | None = None,
    ) -> EncodedPage:
        def link(start: int, size: int) -> str:
            return f"{path}?after={start}&limit={size}"

        links = {
            "self": link(after, limit),
            "first": link(0, limit),
            "prev": link(max(0, after - limit), min(limit, after)) if after > 0 else None,
            "next": link(after + limit, limit) if complete else None,
        }
        entries = [_entry(m) for m in messages]
        if media_type == atom.MEDIA_TYPE:
            events = (bytes(e.event) for e in entries if e.event is not None)
            body = atom.document(context, links, events, created=created)
        else:
            body = _encode(_PageBody(context, after, limit, complete, entries, links))
        return EncodedPage(body, etag_of(body), complete, links)

    async def _read(
        self, client: Client, stream: str, first: int, last: int
    ) -> list[StreamMessage]:
        """The messages at positions ``first .. last`` (fewer where some were deleted)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout
        messages: list[StreamMessage] = []
        try:
            async with StreamReader(
                client,
                stream,
                start_sequence=first,
                batch_size=last - first + 1,
                in_flight=1,
                name="feed",
            ) as reader:
                while not messages or (messages[-1].sequence < last and reader.pending != 0):
                    wait = deadline - loop.time()
                    if wait <= 0:
                        raise unavailable(f"reading {stream} from {first} took too long")
                    batch = await reader.next_batch(max_wait=wait)
                    messages += [m for m in batch if m.sequence <= last]
                    if batch and batch[-1].sequence >= last:
                        break
        except (nats.errors.Error, TimeoutError) as exc:
            raise unavailable(f"cannot read stream {stream}: {type(exc).__name__}") from None
        return messages


def _link_header(links: dict[str, str | None]) -> str:
    return ", ".join(f'<{url}>; rel="{rel}"' for rel, url in links.items() if url is not None)


def router(contexts: Iterable[str], nats: NatsLink, *, feed: Feed | None = None) -> APIRouter:
    """``GET /feed/{context}`` for each context named (its stream has the same name)."""
    known = sorted(contexts)
    pages = feed or Feed(nats)
    api = APIRouter(tags=["feed"], lifespan=nats.lifespan)

    @api.get(
        "/feed/{context}",
        response_model=None,
        responses={
            200: {
                "model": FeedPage,
                "description": "a page of events, oldest first: JSON, or an Atom feed "
                "document (RFC 4287) when Accept prefers application/atom+xml",
                "content": {
                    atom.MEDIA_TYPE: {
                        "schema": {
                            "type": "string",
                            "description": "an Atom feed document: an entry per event, its "
                            "CloudEvents envelope Base64 in content (application/json)",
                        }
                    }
                },
            },
            304: {"description": "the page is unchanged since the ETag sent"},
            **PROBLEM_RESPONSES,
        },
        summary="A page of a context's integration events",
    )
    async def feed_page(
        context: str,
        request: Request,
        after: Annotated[
            int,
            Query(  # a stream sequence is 64-bit: a larger one is 422, before asking NATS
                ge=0, le=2**63 - 1, description="the position before the page's first event"
            ),
        ] = 0,
        limit: Annotated[
            int, Query(ge=1, le=MAX_LIMIT, description="how many positions the page spans")
        ] = DEFAULT_LIMIT,
    ) -> Response:
        """Events at stream positions after+1 .. after+limit. Complete pages never change
        and are cacheable for a year; the head page for a moment. Follow `next` from the
        first page to the head; poll the head page (with If-None-Match) for more. With
        `Accept: application/atom+xml`, the same page as an Atom feed document."""
        problems.reject_unknown_parameters(request)
        if context not in known:
            raise HTTPException(
                404, f"no feed for context {context!r} (known: {', '.join(known) or 'none'})"
            )
        media_type = negotiation.choose(", ".join(request.headers.getlist("accept")), MEDIA_TYPES)
        if media_type is None:
            raise HTTPException(
                406,
                f"the feed is served as {' or '.join(MEDIA_TYPES)}: Accept allows neither",
                headers={"Vary": "Accept"},
            )
        page = await pages.page(context, after, limit, request.url.path, media_type)
        headers = {
            "ETag": page.etag,
            "Cache-Control": pages.cache_control(page),
            "Link": _link_header(page.links),
            "Vary": "Accept",
        }
        # If-None-Match: the app's conditional middleware, as for every endpoint
        return Response(page.body, media_type=media_type, headers=headers)

    return api
