"""What the NATS connection checks and hides without a server: the versions it accepts,
and credentials removed from every URL in a text (servers, real and fake, are in
tests/integration/test_connection.py)."""

from __future__ import annotations

import pytest

from toolkit import ServerVersionError
from toolkit.nats.connection import (
    check_server_version,
    redact,
    server_version_problem,
)
from toolkit.redaction import redact_urls


@pytest.mark.parametrize("version", ["2.10.0", "2.15.1", "3.0.0"])
def test_supported_versions_pass(version: str) -> None:
    check_server_version(version, "nats://x:1")


def test_unreadable_version_is_refused() -> None:
    with pytest.raises(ServerVersionError, match="unreadable version"):
        check_server_version("banana", "nats://x:1")


def test_credentials_never_appear_in_messages() -> None:
    assert (
        redact("nats://alice:s3cret@h1:4222,nats://tok@h2:4223") == "nats://h1:4222,nats://h2:4223"
    )


def test_credentials_are_removed_from_any_text() -> None:
    text = "failed: nats://alice:s3cret@h1:4222 and tls://tok@h2 but not mailto:bob@example.com"
    assert redact_urls(text) == "failed: nats://h1:4222 and tls://h2 but not mailto:bob@example.com"


def test_one_version_check_serves_a_higher_minimum() -> None:
    """The JetStream log needs a newer server than the toolkit: the same check, asked
    with its own minimum, says who needs it and hides credentials."""
    problem = server_version_problem(
        "2.11.4", "nats://alice:s3cret@h:4222", minimum=(2, 12), needed_by="the log needs"
    )
    assert problem == "NATS server at nats://h:4222 is version 2.11.4; the log needs 2.12 or newer"
    assert server_version_problem("2.12.0", "nats://h:4222", minimum=(2, 12)) is None
    assert "unreadable version 'x'" in (server_version_problem("x", "nats://h:4222") or "")
