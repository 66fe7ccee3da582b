"""The one If-None-Match matcher, shared by the read-model endpoints and the feed."""

from __future__ import annotations

import pytest

from toolkit.http.conditional import none_match


@pytest.mark.parametrize(
    ("header", "tag", "matched"),
    [
        (None, '"a"', False),
        ("", '"a"', False),
        ('"a"', '"a"', True),
        ('W/"a"', '"a"', True),  # weak comparison: the W/ of either side does not count
        ('"a"', 'W/"a"', True),
        ('"b", W/"a"', 'W/"a"', True),
        ('"b" , "c"', '"a"', False),
        ("*", '"a"', True),
        (" * ", 'W/"a"', True),
        ('"a-1"', '"a"', False),
    ],
)
def test_if_none_match_by_weak_comparison(header: str | None, tag: str, matched: bool) -> None:
    assert none_match(header, tag) is matched
