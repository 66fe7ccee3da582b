"""Connecting to NATS: the server at ``NATS_URL``, or the embedded one when none is given.

Servers older than 2.10 are refused at connect: they silently ignore stream and consumer
options the toolkit relies on, which would turn into wrong behaviour much later.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import ssl
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import nats
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from toolkit.config import NatsAuth, Settings
from toolkit.embedded import EmbeddedServer
from toolkit.errors import ConnectError, ServerVersionError

log = logging.getLogger(__name__)

_URL_CREDENTIALS = re.compile(r"([a-z][a-z0-9+.-]*://)[^@/\s]*@", re.IGNORECASE)

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


def redact_urls(text: str) -> str:
    """``text`` with the credentials of any URL in it removed."""
    return _URL_CREDENTIALS.sub(r"\1", text)


def check_server_version(version: str, url: str) -> None:
    try:
        major, minor = (int(p) for p in version.split("-")[0].split(".")[:2])
    except ValueError:
        raise ServerVersionError(
            f"NATS server at {redact(url)} reports an unreadable version {version!r}; "
            f"the toolkit requires {MIN_SERVER_VERSION[0]}.{MIN_SERVER_VERSION[1]} or newer"
        ) from None
    if (major, minor) < MIN_SERVER_VERSION:
        raise ServerVersionError(
            f"NATS server at {redact(url)} is version {version}; the toolkit requires "
            f"{MIN_SERVER_VERSION[0]}.{MIN_SERVER_VERSION[1]} or newer"
        )


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
) -> Client:
    """Connect to a NATS server with JetStream, checking its version. ``url`` may name
    several servers of a cluster, comma-separated; the client fails over between them.
    ``auth`` adds credentials (see :class:`~toolkit.config.NatsAuth`)."""
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
    return client


@dataclass
class Nats:
    """An open connection: the client, its JetStream context, and where it points."""

    client: Client
    js: JetStreamContext
    url: str
    embedded: EmbeddedServer | None


def running_embedded_url(folder: Path) -> str | None:
    """The URL of an embedded server another toolkit process runs in ``folder``, if any:
    processes sharing a data folder share its server instead of fighting over its files."""
    try:
        pid_text, url = (folder / "server.url").read_text().split()
        os.kill(int(pid_text), 0)
    except (OSError, ValueError):
        return None
    return url


@contextlib.asynccontextmanager
async def open_nats(settings: Settings, *, name: str = "toolkit") -> AsyncIterator[Nats]:
    """Yield a connection to ``settings.nats_url``, or to an embedded server started in
    ``<data_dir>/nats`` and stopped on the way out (also on errors and Ctrl-C)."""
    embedded: EmbeddedServer | None = None
    url = settings.nats_url
    if url is None:
        folder = Path(settings.data_dir) / "nats"
        url = running_embedded_url(folder)
        if url is None:
            embedded = EmbeddedServer(folder, binary=settings.nats_server)
            embedded.start()
            url = embedded.url
    try:
        client = await connect(url, name=name, auth=settings.nats_auth)
        try:
            yield Nats(client=client, js=client.jetstream(), url=url, embedded=embedded)
        finally:
            with contextlib.suppress(Exception):
                await client.drain()
    finally:
        if embedded is not None:
            embedded.stop()
