"""Where webhooks may go: callback URLs checked at registration and again at each delivery.

A subscriber chooses the URL and the dispatcher POSTs from inside the operator's network:
unchecked, a URL naming a loopback, private, link-local or metadata address (in any
spelling) makes the dispatcher a proxy into that network (server-side request forgery).
So a destination is ``http`` or ``https``, with a port from 1 to 65535 and no whitespace
or control character anywhere; its host is resolved by the operating system's resolver,
as the HTTP client would resolve it (so ``127.1``, ``2130706433`` or ``0x7f.1`` mean what
they mean there), and every address must be global. IPv4 addresses carried inside IPv6
(IPv4-mapped, IPv4-compatible, NAT64, 6to4) are judged by the IPv4 address they carry.

The operator opens named hosts or networks with ``TOOLKIT_WEBHOOK_ALLOW``
(``127.0.0.1/32,::1,receiver.internal``): a named host is trusted whatever it resolves to.

The check runs again at each delivery, and the delivery connects to the very address
checked (:func:`pinned_request`), so a name that resolves elsewhere later (DNS rebinding)
gains nothing.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import urlsplit

import httpx

from toolkit.errors import ConfigurationError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SETTING = "TOOLKIT_WEBHOOK_ALLOW"

_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known prefix (RFC 6052)
_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,62}\.?)*")


class Refused(ValueError):
    """A callback URL the dispatcher must not send to; its text says why."""


@dataclass(frozen=True)
class Allowed:
    """What the operator opened to webhooks beyond global addresses."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, entries: Iterable[str]) -> Allowed:
        """From the setting's entries: networks (``10.1.0.0/16``, ``::1``) or host names."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for entry in (e.strip() for e in entries):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                name = entry.lower().rstrip(".")
                if not _HOST_NAME.fullmatch(name):
                    raise ConfigurationError(
                        f"{SETTING}: {entry!r} is neither a network nor a host name"
                    ) from None
                hosts.add(name)
        return cls(tuple(networks), frozenset(hosts))

    def host(self, name: str) -> bool:
        return name.lower().rstrip(".") in self.hosts

    def address(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)


class Target(NamedTuple):
    """The parts of a callback URL the checks need."""

    scheme: str
    host: str
    port: int


def parse(url: str) -> Target:
    """The URL's scheme, host and port, or :class:`Refused` for a URL no request can be
    made of: another scheme, no host, a port out of range, whitespace or a control
    character (a CR/LF would split the request)."""
    if any(c.isspace() or ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in url):
        raise Refused("the callback URL must hold no whitespace nor control character")
    try:
        parts = urlsplit(url)
        parts.hostname  # noqa: B018 (a bracket left open raises here)
    except ValueError:
        raise Refused("the callback URL is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Refused("the callback URL must be http:// or https:// with a host")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    if not 1 <= port <= 65535:
        raise Refused("the callback URL's port must be a number from 1 to 65535")
    return Target(parts.scheme, parts.hostname, port)


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address the operating system's resolver gives ``host`` (in a worker thread,
    off the event loop), as the HTTP client would connect to it."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))


def _carried(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, NAT64, 6to4)."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (int(address) >> 32 == 0 and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _kind(address: IPAddress) -> str | None:
    """What keeps a webhook from ``address`` (None: a global address)."""
    for kind, test in (
        ("an unspecified", address.is_unspecified),
        ("a loopback", address.is_loopback),
        ("a link-local", address.is_link_local),
        ("a multicast", address.is_multicast),
        ("a shared (100.64.0.0/10)", address in _SHARED),
        ("a reserved", address.is_reserved),
        ("a private", address.is_private),
        ("a non-global", not address.is_global),
    ):
        if test:
            return f"{kind} address"
    return None


def refusal(address: IPAddress, allowed: Allowed) -> tuple[str, str] | None:
    """Why a webhook may not go to ``address`` (the address as shown, and its kind), or
    None when it may."""
    carried = _carried(address)
    if allowed.address(address) or (carried is not None and allowed.address(carried)):
        return None
    kind = _kind(address if carried is None else carried)
    if kind is None:
        return None
    return (str(address) if carried is None else f"{address} ({carried})"), kind


def _literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def check(url: str, allowed: Allowed, within: float = 5.0) -> IPAddress:
    """The address to connect to for ``url``: its host resolved now, every address
    checked; :class:`Refused` says why not. A host the operator named is not judged."""
    target = parse(url)
    try:
        async with asyncio.timeout(within):
            addresses = await resolve(target.host, target.port)
    except TimeoutError:
        raise Refused(f"{target.host} does not resolve within {within:g}s") from None
    except (OSError, UnicodeError, ValueError) as exc:
        raise Refused(f"{target.host} does not resolve: {exc}") from None
    if not addresses:
        raise Refused(f"{target.host} does not resolve")
    if not allowed.host(target.host):
        for address in addresses:
            why = refusal(address, allowed)
            if why is not None:
                shown, kind = why
                if _literal(target.host):  # (what the subscriber wrote: no name to show)
                    raise Refused(f"{shown} is {kind}")
                raise Refused(f"{target.host} resolves to {shown}, {kind}")
    return addresses[0]


async def admit(url: str, allowed: Allowed, within: float = 5.0) -> None:
    """Check a URL a subscriber registers: a named host is taken as the operator's word
    (not resolved: it may be set up later), anything else resolved and judged."""
    if not allowed.host(parse(url).host):
        await check(url, allowed, within)


def pinned_request(
    http: httpx.AsyncClient, url: str, address: IPAddress, body: bytes, headers: dict[str, str]
) -> httpx.Request:
    """A POST of ``body`` to ``url`` that connects to ``address`` (the one checked), not to
    whatever the host resolves to by then. The URL's host is swapped for the address, the
    original ``Host`` header is sent, and for https the hostname goes in the TLS SNI
    (httpcore's ``sni_hostname`` request extension), which is also the name the server's
    certificate is verified against. This is the request-level way httpx offers; a custom
    resolver would mean replacing httpcore's network backend."""
    original = httpx.URL(url)
    extensions = {"sni_hostname": original.raw_host.decode("ascii")}
    if original.userinfo:  # (a store's older URL) a header: httpx logs the URL it sends
        basic = base64.b64encode(f"{original.username}:{original.password}".encode()).decode()
        headers = {**headers, "authorization": f"Basic {basic}"}
    return http.build_request(
        "POST",
        original.copy_with(host=str(address), username=None, password=None),
        content=body,
        headers={**headers, "host": original.netloc.decode("ascii").rpartition("@")[2]},
        extensions=extensions if original.scheme == "https" else {},
    )
