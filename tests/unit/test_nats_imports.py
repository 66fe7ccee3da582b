"""Streams of other accounts (``TOOLKIT_NATS_IMPORTS``): the setting, and which JetStream
API requests go to an import's prefix (every one about that stream, nothing else)."""

from __future__ import annotations

import pytest

from toolkit import ConfigurationError, Settings
from toolkit.nats.imports import routed

PREFIXES = {"sales": "JS.sales.API"}


def test_the_setting_names_streams_and_their_prefixes() -> None:
    settings = Settings.from_env({"TOOLKIT_NATS_IMPORTS": " sales , shipping=Ship.API ,"})
    assert settings.nats_imports == (("sales", "JS.sales.API"), ("shipping", "Ship.API"))
    assert Settings.from_env({}).nats_imports == ()


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("sales.x", "not a stream name"),
        ("=JS.API", "not a stream name"),
        ("sales=JS.*.API", "not an import prefix"),
        ("sales=$JS.API", "not an import prefix"),
        ("sales=JS..API", "not an import prefix"),
        ("sales=A.API,sales=B.API", "names stream sales twice"),
    ],
)
def test_a_wrong_setting_is_refused_in_one_line(value: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says) as refused:
        Settings.from_env({"TOOLKIT_NATS_IMPORTS": value})
    assert str(refused.value).startswith("TOOLKIT_NATS_IMPORTS")


@pytest.mark.parametrize(
    "operation",
    [
        "STREAM.INFO.sales",
        "STREAM.MSG.GET.sales",
        "DIRECT.GET.sales",
        "DIRECT.GET.sales.sales.order.>",
        "CONSUMER.CREATE.sales",
        "CONSUMER.CREATE.sales.projector-1.sales.>",
        "CONSUMER.DURABLE.CREATE.sales.queue",
        "CONSUMER.INFO.sales.queue",
        "CONSUMER.DELETE.sales.projector-1",
        "CONSUMER.MSG.NEXT.sales.projector-1",
        "STREAM.DELETE.sales",  # routed too: the import refuses it, not the client
    ],
)
def test_requests_about_an_imported_stream_go_to_its_prefix(operation: str) -> None:
    assert routed(f"$JS.API.{operation}", PREFIXES) == f"JS.sales.API.{operation}"


@pytest.mark.parametrize(
    "subject",
    [
        "$JS.API.INFO",  # the account's own
        "$JS.API.STREAM.NAMES",
        "$JS.API.STREAM.INFO.shipping",
        "$JS.API.STREAM.INFO.sales-archive",  # a name that starts like an imported one
        "$JS.API.DIRECT.GET.KV_toolkit_leases.$KV.toolkit_leases.relay.sales",
        "$JS.API.CONSUMER.MSG.NEXT.shipping.sales",  # a consumer named like the stream
        "sales.order.1.OrderPlaced",  # a publish, not an API request
        "$JS.ACK.sales.queue.1.2.3.4.5",
    ],
)
def test_everything_else_stays_in_the_account(subject: str) -> None:
    assert routed(subject, PREFIXES) == subject
