"""Conditional requests (RFC 9110 section 13): the one matcher of ``If-None-Match``.

The read-model endpoints (weak tags from the model's state, :mod:`toolkit.http.caching`)
and the event feed (strong tags from a page's bytes, :mod:`toolkit.http.feed`) answer 304
when it matches.
"""

from __future__ import annotations


def none_match(if_none_match: str | None, tag: str) -> bool:
    """Whether ``If-None-Match`` names ``tag`` (or is ``*``), by weak comparison (RFC 9110
    13.1.2: ``W/"x"`` and ``"x"`` match), as that header is compared: so the response
    would be the one the client has, and 304 is the answer."""
    if not if_none_match:
        return False
    candidates = [candidate.strip().removeprefix("W/") for candidate in if_none_match.split(",")]
    return "*" in candidates or tag.removeprefix("W/") in candidates
