"""Connecting to NATS: the server at ``NATS_URL``, or the embedded one when none is given.

Servers older than 2.10 are refused at connect: they silently ignore stream and consumer
options the toolkit relies on, which would turn into wrong behaviour much later. A client
the server closes is replaced (:class:`Connection`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import nats
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from toolkit.backoff import Backoff, cancel_and_wait
from toolkit.config import NatsAuth, Settings
from toolkit.errors import ConnectError, ServerVersionError
from toolkit.nats.embedded import SharedServer
from toolkit.nats.imports import jetstream, remember
from toolkit.redaction import redact_urls

log = logging.getLogger(__name__)

"""A URL's ``user:password@``, up to its last ``@`` (a password may hold one)."""

MIN_SERVER_VERSION = (2, 10)


def redact(url: str) -> str:
    """A URL without its credentials, for messages and logs."""
    parts = []
    for one in url.split(","):
        split = urlsplit(one.strip() if "://" in one else f"nats://{one.strip()}")
        host = split.hostname or ""
        netloc = f"{host}:{split.port}" if split.port else host
        parts.append(urlunsplit((split.scheme, netloc, split.path, "", "")))
    return ",".join(parts)


def server_version_problem(
    version: str,
    url: str,
    *,
    minimum: tuple[int, int] = MIN_SERVER_VERSION,
    needed_by: str = "the toolkit requires",
) -> str | None:
    """Why the server at ``url``, which reports ``version``, is too old for what needs
    ``minimum`` (``needed_by`` says who), or None when it is recent enough. The one
    reading of a server's version: the toolkit's own check and the JetStream log's
    (which needs a newer server, and raises eventsourcing's error) both ask it."""
    required = f"{needed_by} {minimum[0]}.{minimum[1]} or newer"
    try:
        major, minor = (int(p) for p in version.split("-")[0].split(".")[:2])
    except ValueError:
        return f"NATS server at {redact(url)} reports an unreadable version {version!r}; {required}"
    if (major, minor) < minimum:
        return f"NATS server at {redact(url)} is version {version}; {required}"
    return None


def check_server_version(version: str, url: str) -> None:
    """Refuse a server older than the toolkit supports (:class:`ServerVersionError`)."""
    problem = server_version_problem(version, url)
    if problem is not None:
        raise ServerVersionError(problem)


_denial_listeners: weakref.WeakKeyDictionary[Client, list[Callable[[str], None]]] = (
    weakref.WeakKeyDictionary()
)


def on_permission_denied(client: Client, listener: Callable[[str], None]) -> Callable[[], None]:
    """Call ``listener(reason)`` when the server refuses ``client`` a publish or a
    subscription (a permissions violation: the server drops the message and tells only
    the connection). Returns a function that removes the listener."""
    listeners = _denial_listeners.setdefault(client, [])
    listeners.append(listener)

    def remove() -> None:
        with contextlib.suppress(ValueError):
            listeners.remove(listener)

    return remove


def _tls(auth: NatsAuth) -> ssl.SSLContext | None:
    if auth.ca is None and auth.cert is None:
        return None
    context = ssl.create_default_context(cafile=auth.ca)
    if auth.cert is not None and auth.key is not None:
        context.load_cert_chain(auth.cert, auth.key)
    return context


def _credentials(auth: NatsAuth) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if auth.creds:
        options["user_credentials"] = auth.creds
    if auth.nkey_seed:
        options["nkeys_seed"] = auth.nkey_seed
    if auth.user:
        options["user"], options["password"] = auth.user, auth.password
    if auth.token:
        options["token"] = auth.token
    tls = _tls(auth)
    if tls is not None:
        options["tls"] = tls
    return options


async def connect(
    url: str,
    *,
    name: str = "toolkit",
    connect_timeout: float = 5.0,
    auth: NatsAuth | None = None,
    closed_cb: Callable[[], Awaitable[None]] | None = None,
    imports: Mapping[str, str] | None = None,
) -> Client:
    """Connect to a NATS server with JetStream, checking its version. ``url`` may name
    several servers of a cluster, comma-separated; the client fails over between them.
    ``auth`` adds credentials (see :class:`~toolkit.config.NatsAuth`); ``closed_cb`` is
    nats-py's, called once the client is closed (see :class:`Connection`). ``imports``
    maps streams of other accounts to the prefix their JetStream API is imported under
    (see :mod:`toolkit.nats.imports`)."""
    servers = [part.strip() for part in url.split(",") if part.strip()]
    client: Client | None = None
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        """nats-py prints asynchronous errors by default; route them to logging, and
        tell whoever listens when the server refused a publish or subscription."""
        text = redact_urls(str(exc) or type(exc).__name__)
        errors.append(text)
        log.warning("nats: %s", text)
        if "permissions violation" in text.lower() and client is not None:
            for listener in list(_denial_listeners.get(client, ())):
                listener(text.removeprefix("nats: "))

    try:
        client = await nats.connect(
            servers,
            name=name,
            connect_timeout=connect_timeout,
            allow_reconnect=True,
            max_reconnect_attempts=2,  # at first connect: fail fast with a clear error
            reconnect_time_wait=0.5,
            error_cb=on_error,
            closed_cb=closed_cb,
            **_credentials(auth or NatsAuth()),
        )
        client.options["max_reconnect_attempts"] = -1  # once connected: never give up
    except Exception as exc:
        reason = redact_urls(f"{type(exc).__name__} {exc}".strip())
        if isinstance(exc, nats.errors.NoServersError) and errors:
            # Why the tries failed says more than "no servers"; a refusal of the
            # credentials says most (under load a try may just see the socket reset).
            refused = [e for e in errors if "authorization" in e.lower()]
            reason = (refused or errors)[-1]
        if "authorization" in reason.lower():
            reason += " (check NATS_URL's user and password, or TOOLKIT_NATS_*)"
        raise ConnectError(f"cannot connect to NATS at {redact(url)}: {reason}") from None
    try:
        check_server_version(client.connected_server_version._server_version, url)
    except BaseException:
        await client.close()
        raise
    remember(client, imports or {})
    return client


class Connection:
    """A connection to NATS that outlives its nats-py client.

    nats-py reconnects by itself when the network or the server goes away, but not after
    the server closed the connection with an ``-ERR``: a control line over the server's
    ``max_control_line``, credentials revoked or expired, an authorization violation.
    That client is closed for good, and whatever holds it fails on every call. A
    Connection connects a new client the same way instead (again and again, with
    back-off, until it succeeds or :meth:`close` is called) and runs ``on_connect`` on it
    (what its owner needs on every client, such as a subscription).

    So the relay, projectors, the feed, the webhook dispatcher and the JetStream log hold
    a Connection and take :attr:`client` (or :meth:`current`) for each attempt: an
    attempt that failed on a closed client is followed by one on the new client.
    """

    def __init__(
        self,
        url: str | None,
        *,
        name: str = "toolkit",
        auth: NatsAuth | None = None,
        connect_timeout: float = 5.0,
        on_connect: Callable[[Client], Awaitable[None]] | None = None,
        imports: Mapping[str, str] | None = None,
    ) -> None:
        self.url = url
        """None for a client connected elsewhere (:meth:`of`), which cannot be replaced."""
        self.name = name
        self.auth = auth
        self.connect_timeout = connect_timeout
        self.on_connect = on_connect
        self.imports = dict(imports or {})
        """Streams of other accounts, and where their JetStream API is imported."""
        self.replaced = 0
        """Clients replaced after the server closed them."""
        self._client: Client | None = None
        self._js: tuple[Client, JetStreamContext] | None = None
        self._closing = False
        self._replacing: asyncio.Task[None] | None = None
        self._failure = ""
        """Why the last attempt to connect again failed."""

    @classmethod
    def of(cls, client: Client | Connection) -> Connection:
        """``client`` if it is a Connection; otherwise one over a nats-py client
        connected elsewhere, whose settings it does not know: it cannot replace that
        client, and once it is closed :attr:`client` raises :class:`ConnectError`."""
        if isinstance(client, Connection):
            return client
        connection = cls(None)
        connection._client = client
        return connection

    async def open(self) -> Connection:
        """Connect the first client (raises :class:`ConnectError` as :func:`connect`)."""
        self._client = await self._connect()
        return self

    async def _connect(self) -> Client:
        assert self.url is not None
        client = await connect(
            self.url,
            name=self.name,
            connect_timeout=self.connect_timeout,
            auth=self.auth,
            closed_cb=self._closed,
            imports=self.imports,
        )
        try:
            if self.on_connect is not None:
                await self.on_connect(client)
        except BaseException:
            await client.close()
            raise
        return client

    @property
    def client(self) -> Client:
        """The current client. While a closed one is being replaced, that closed one
        (calls fail with nats-py's ``ConnectionClosedError``, and a later attempt gets
        the new client); :class:`ConnectError` when it is closed for good."""
        client = self._client
        if client is None:
            raise ConnectError(f"the NATS connection {self.name} is not open")
        if client.is_closed and (self._closing or self.url is None):
            raise ConnectError(
                f"the NATS connection {self.name} is closed"
                + (f" ({_closed_by(client)})" if client.last_error else "")
                + (
                    ": it was given as a nats-py client, which the toolkit cannot connect "
                    "again; give a toolkit.Connection instead"
                    if self.url is None and not self._closing
                    else ""
                )
            )
        return client

    @property
    def js(self) -> JetStreamContext:
        """The current client's JetStream context (requests about imported streams go
        to their account's API)."""
        client = self.client
        if self._js is None or self._js[0] is not client:
            self._js = (client, jetstream(client))
        return self._js[1]

    async def current(self) -> Client:
        """The current client, after waiting up to the connect timeout for a replacement
        under way (unless an attempt of it failed already: the server refuses for now)."""
        replacing = self._replacing
        if replacing is not None and not replacing.done() and not self._failure:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.connect_timeout):
                    await asyncio.shield(replacing)
        return self.client

    @property
    def trouble(self) -> str | None:
        """Why the connection cannot be used right now, or None."""
        client = self._client
        if client is None or self._closing:
            return None
        if client.is_closed:
            reason = f"NATS closed the connection ({_closed_by(client)})"
            if self.url is None:
                return reason
            return f"{reason}; connecting again" + (
                f" failed: {self._failure}" if self._failure else ""
            )
        if client.is_reconnecting or not client.is_connected:
            return "the NATS server cannot be reached; reconnecting"
        return None

    async def _closed(self) -> None:
        """nats-py's ``closed_cb``: replace the current client unless it was closed here."""
        current = self._client
        if self._closing or current is None or not current.is_closed:
            return  # closed by close(), or a client that never became the current one
        if self._replacing is None or self._replacing.done():
            self._replacing = asyncio.create_task(self._replace(current))

    async def _replace(self, closed: Client) -> None:
        log.warning(
            "nats %s: the server closed the connection (%s); connecting again",
            self.name, _closed_by(closed),
        )  # fmt: skip
        backoff = Backoff(0.25, 5.0)  # one per replacement: it starts afresh each time
        while not self._closing:
            try:
                client = await self._connect()
            except Exception as exc:  # ConnectError, or what on_connect raised
                self._failure = redact_urls(str(exc) or type(exc).__name__)
                log.warning("nats %s: %s; again in %.1fs", self.name, self._failure, backoff.delay)
                await backoff.wait()  # close() cancels this task: no stop event needed
                continue
            if self._closing:
                await client.close()
                return
            self._client, self._failure = client, ""
            self.replaced += 1
            log.warning("nats %s: connected again", self.name)
            return

    async def close(self, *, drain: bool = True) -> None:
        """Close the client (if this Connection connected it), draining it first unless
        ``drain`` is False; nothing is replaced any more."""
        self._closing = True
        replacing = self._replacing
        if replacing is not None and not replacing.done():
            await cancel_and_wait(replacing)
        client = self._client
        if client is None or self.url is None:
            return
        if drain:
            with contextlib.suppress(Exception):  # no server: it cannot drain
                await client.drain()
        if not client.is_closed:
            # nats-py's close flushes the socket first and raises when the server has
            # just gone (ConnectionResetError): closing is all that is left to do then.
            with contextlib.suppress(ConnectionError):
                await client.close()


def _closed_by(client: Client) -> str:
    """What the server said when it closed ``client`` (nats-py keeps its last error)."""
    error = client.last_error
    if error is None:
        return "no reason given"
    return redact_urls((str(error) or type(error).__name__).removeprefix("nats: "))


class OnConnection:
    """For what holds a :class:`Connection` and runs for long (relay, projector, work
    queue): :attr:`client` and :attr:`js` are the connection's current ones, taken
    afresh for each attempt, so that one after a replaced client uses the new one."""

    connection: Connection

    @property
    def client(self) -> Client:
        return self.connection.client

    @property
    def js(self) -> JetStreamContext:
        return self.connection.js


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """nats-py's header parser (``Client._parse_header_lines``) with the same results,
    faster (1.8 µs against 4.5 for a relayed message's three headers, measured alone): it
    tests each character of each name for whitespace in a generator."""
    headers: dict[str, str] = {}
    for line in raw.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if key and len(key.split()) != 1:  # whitespace inside a name: not a header
            continue
        headers[key] = value.strip().decode("utf-8", "replace")
    return headers


def install_header_parser(client: Client) -> None:
    """Give ``client`` :func:`parse_header_lines` (a reader's and the JetStream log's
    connections, which parse headers on every message), where its nats-py has one."""
    if getattr(client, "_parse_header_lines", None) is not None:
        client._parse_header_lines = parse_header_lines  # type: ignore[method-assign]


@dataclass
class Nats(OnConnection):
    """An open connection (one that replaces a client the server closed), and where it
    points. Hand ``connection`` to what runs for long (relay, projector, dispatcher);
    ``client`` and ``js`` are its current client and JetStream context."""

    connection: Connection
    url: str
    embedded: SharedServer | None
    """The data folder's embedded server, when ``NATS_URL`` names none."""


def _point_at(connection: Connection, url: str) -> None:
    """Point ``connection`` at the data folder's server, which now listens at ``url``."""
    log.warning("nats %s: the embedded server now listens at %s", connection.name, url)
    connection.url = url  # where a replacement client connects
    with contextlib.suppress(ConnectError, nats.errors.ConnectionClosedError):
        connection.client.set_server_pool([url])  # where this one reconnects


@contextlib.asynccontextmanager
async def open_nats(settings: Settings, *, name: str = "toolkit") -> AsyncIterator[Nats]:
    """Yield a connection to ``settings.nats_url``, or to the embedded server of
    ``<data_dir>/nats``, shared with the other processes on that folder
    (:class:`~toolkit.nats.embedded.SharedServer`): started when none runs, started again
    (and followed) when it stops while the connection is open; the server this process
    started is stopped on the way out (also on errors and Ctrl-C)."""
    shared: SharedServer | None = None
    url = settings.nats_url
    if url is None:
        shared = SharedServer(Path(settings.data_dir) / "nats", binary=settings.nats_server)
        url = await shared.url()
    try:
        connection = await Connection(
            url, name=name, auth=settings.nats_auth, imports=dict(settings.nats_imports)
        ).open()
        keeping = None
        if shared is not None:
            keeping = asyncio.create_task(
                shared.keep(url, functools.partial(_point_at, connection))
            )
        try:
            yield Nats(connection=connection, url=url, embedded=shared)
        finally:
            if keeping is not None:
                await cancel_and_wait(keeping)
            await connection.close()
    finally:
        if shared is not None:
            shared.leave()
