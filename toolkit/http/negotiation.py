"""Proactive content negotiation (RFC 9110 section 12.5.1): which of an endpoint's media
types an ``Accept`` header prefers.

Each offer takes the quality of the most specific media range that matches it (``type/
subtype`` over ``type/*`` over ``*/*``); the highest quality above zero wins, ties going
to the offer listed first (the server's preference). Parameters other than ``q`` are
ignored. A header that is absent or holds no well-formed media range at all (a
malformed header is not the client saying "none of these") selects the first offer; one
that holds ranges of which none matches selects nothing, and the endpoint answers 406.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_RANGE = re.compile(rf"\s*({_TOKEN})/({_TOKEN})\s*")
_QUALITY = re.compile(r"\s*(0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)\s*")


def _ranges(accept: str) -> list[tuple[str, str, float]]:
    """The well-formed media ranges of ``accept``, as (type, subtype, quality)."""
    ranges = []
    for item in accept.split(","):
        kind, *parameters = item.split(";")
        matched = _RANGE.fullmatch(kind)
        if matched is None:
            continue
        quality: float | None = 1.0  # None: a malformed q, and the range is ignored
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                found = _QUALITY.fullmatch(value)
                quality = float(found.group(1)) if found else None
        if quality is not None:
            ranges.append((matched.group(1).lower(), matched.group(2).lower(), quality))
    return ranges


def _quality(offer: str, ranges: list[tuple[str, str, float]]) -> float:
    kind, _, subtype = offer.partition("/")
    best, specificity = 0.0, -1
    for range_kind, range_subtype, quality in ranges:
        if range_kind == kind and range_subtype == subtype:
            rank = 2
        elif range_kind == kind and range_subtype == "*":
            rank = 1
        elif range_kind == "*" and range_subtype == "*":
            rank = 0
        else:
            continue
        if rank > specificity or (rank == specificity and quality > best):
            best, specificity = quality, rank
    return best


def choose(accept: str | None, offers: Sequence[str]) -> str | None:
    """The offer ``accept`` prefers (offers are lower-case ``type/subtype``, the default
    first), or None when it accepts none of them."""
    ranges = _ranges(accept) if accept else []
    if not ranges:
        return offers[0]
    best, chosen = 0.0, None
    for offer in offers:
        quality = _quality(offer, ranges)
        if quality > best:
            best, chosen = quality, offer
    return chosen
