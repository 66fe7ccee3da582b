"""Hostile input, generated: everything that parses outside data meets thousands of
inputs (over 10,000 in all), and each ends as a result or as the error it documents,
never as another exception that would stop a consumer, a server or the CLI."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import string
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contexts.system import system
from projections.billing import Accounts
from projections.shipping import Shipments
from tests.conftest import create_read_models
from toolkit import ContractError, cli, wire
from toolkit.cli.parser import parser
from toolkit.config import Settings
from toolkit.errors import SubjectError
from toolkit.http.app import create_app
from toolkit.http.consistency import ConsistencyToken, InvalidToken
from toolkit.http.resources import CursorError, decode_cursor, encode_cursor
from toolkit.read.reader import StreamMessage
from toolkit.read.translator import UnknownEvent

pytestmark = pytest.mark.timeout(300)

FAST = settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
contract_types = st.sampled_from(
    ["sales.OrderPlaced", "sales.OrderCancelled", "sales.CustomerRegistered", "sales.Nope", ""]
)


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    """Bodies that look like envelopes, with data of any shape."""
    body: dict[str, Any] = {
        "specversion": "1.0",
        "type": draw(contract_types),
        "schemaversion": draw(st.integers(min_value=-2, max_value=4) | st.text(max_size=3)),
        "data": draw(json_values),
    }
    if draw(st.booleans()):
        del body[draw(st.sampled_from(sorted(body)))]
    return msgspec.json.encode(body)


bodies = envelopes() | st.binary(max_size=300) | st.text(max_size=300).map(str.encode)


@FAST
@given(body=bodies, headers=st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=4))
def test_any_body_and_headers_end_as_facts_a_skip_or_a_contract_error(
    body: bytes, headers: dict[str, str]
) -> None:
    for translator in (*Shipments.translators, *Accounts.translators):
        message = StreamMessage("sales", 1, "sales.order.x.OrderPlaced", headers, body)
        with contextlib.suppress(ContractError, UnknownEvent):
            facts = translator.translate(message)
            assert isinstance(facts, list)


@FAST
@given(value=st.text())
def test_any_id_becomes_one_token_matching_only_itself(value: str) -> None:
    try:
        token = wire.encode_token(value)
    except SubjectError as refused:  # empty, too long for a subject, or not UTF-8
        reason = str(refused)
        assert value == "" or f"more than {wire.MAX_ID_TOKEN}" in reason or "surrogate" in reason
        return
    assert len(token) <= wire.MAX_ID_TOKEN
    assert not set(token) & set(".*> \t\r\n") and token.isascii()
    assert wire.decode_token(token) == value


@FAST
@given(name=st.text(max_size=80))
def test_any_name_is_checked_or_refused_clearly(name: str) -> None:
    try:
        assert wire.check_name("context", name) == name
    except SubjectError as exc:
        assert "invalid context name" in str(exc)
    else:
        assert name.isascii() and "." not in name and " " not in name


@FAST
@given(text=st.text(max_size=60) | st.from_regex(r"[a-z]{1,8}:[0-9]{1,22}", fullmatch=True))
def test_any_consistency_token_parses_or_is_refused_in_one_line(text: str) -> None:
    try:
        token = ConsistencyToken.parse(text)
    except InvalidToken as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 400
    else:
        assert str(ConsistencyToken.parse(str(token))) == str(token)


@FAST
@given(
    text=st.text(alphabet=string.ascii_letters + string.digits + "-_=+/", max_size=80)
    | st.text(max_size=40)
)
def test_any_cursor_decodes_or_is_refused(text: str) -> None:
    try:
        order, key = decode_cursor(text)
    except CursorError as exc:
        assert "is not one this API gave" in str(exc)
    else:
        assert decode_cursor(encode_cursor(order, key)) == (order, key)


@FAST
@given(msg_id=st.text(max_size=40))
def test_any_message_id_yields_a_position_or_none(msg_id: str) -> None:
    position = wire.log_position(msg_id)
    assert position is None or position >= 0
    assert isinstance(wire.message_id_context(msg_id), str)


# -- HTTP: parameters and bodies through the whole app, in process ------------------------

query_values = st.text(max_size=30) | st.integers().map(str)
query_names = st.sampled_from(["limit", "cursor", "status", "recipient_id", "x", "after"])


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    data_dir = tmp_path_factory.mktemp("fuzz")
    create_read_models(data_dir, Shipments, Accounts)  # so reads reach the database
    return create_app(
        system, Settings(data_dir=data_dir, nats_url="nats://127.0.0.1:1"), relay=False
    )


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    path=st.sampled_from(
        ["/shipping/shipments", "/shipping/shipments/{}", "/billing/accounts/{}", "/sales/orders"]
    ),
    segment=st.text(max_size=40),
    params=st.dictionaries(query_names, query_values, max_size=3),
    body=json_values,
    raw=st.binary(max_size=80),
)
async def test_any_request_gets_an_answer_not_a_server_error(
    app: Any, path: str, segment: str, params: dict[str, str], body: Any, raw: bytes
) -> None:
    encoded = quote(segment, safe="") or "x"  # any text, as a client would send it
    url = path.format(encoded)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        if path == "/sales/orders":
            sent = [
                await http.post(url, json=body),
                await http.post(url, content=raw, headers={"content-type": "application/json"}),
            ]
        else:
            sent = [
                await http.get(url, params=params),
                await http.get(url, headers={"Consistency-Token": encoded[:60]}),
            ]
    for response in sent:
        assert response.status_code < 500 or response.status_code == 503, response.text
        if response.status_code >= 400:
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["detail"]


SMALL_BODY = 512
"""The body limit of the app below: small, so that sizes around it are quick to send."""


@pytest.fixture(scope="module")
def limited_app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    data_dir = tmp_path_factory.mktemp("fuzz-limit")
    settings = Settings(data_dir=data_dir, nats_url="nats://127.0.0.1:1", max_body=SMALL_BODY)
    return create_app(system, settings, relay=False)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    path=st.sampled_from(
        [
            "/sales/orders",
            "/sales/customers",
            "/webhooks/sales/subscriptions",
            "/shipping/shipments",
        ]
    ),
    size=st.integers(SMALL_BODY - 8, SMALL_BODY + 8) | st.integers(0, 4 * SMALL_BODY),
    chunk=st.none() | st.integers(1, 2 * SMALL_BODY),
    fill=st.sampled_from([b" ", b"{", b"\xff", b"9"]),
)
async def test_any_body_size_is_taken_or_refused_as_too_large_never_a_server_error(
    limited_app: Any, path: str, size: int, chunk: int | None, fill: bytes
) -> None:
    """Bodies around the limit, sent whole (with a length) or in chunks (without one: a
    read, which never asks for its body, answers as it would without one)."""
    raw = fill * size
    content: Any = raw
    if chunk is not None:

        async def chunks() -> Any:
            for start in range(0, size, chunk):
                yield raw[start : start + chunk]

        content = chunks()
    transport = httpx.ASGITransport(app=limited_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        method = "GET" if path == "/shipping/shipments" else "POST"
        response = await http.request(
            method, path, content=content, headers={"content-type": "application/json"}
        )
    assert response.status_code < 500 or response.status_code == 503, response.text
    seen = chunk is None or method == "POST"  # declared, or read by the route
    if size <= SMALL_BODY or seen:
        assert (response.status_code == 413) == (size > SMALL_BODY), (size, response.text)
    if response.status_code >= 400:
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"]


EDGES = [2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**100]
every_integer = st.integers() | st.sampled_from(EDGES + [-n for n in EDGES] + [-(2**63) - 1])


def forged_cursor(value: object) -> str:
    """A cursor as a client could forge one (orjson refuses integers beyond 64 bits)."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(number=every_integer)
async def test_any_integer_a_client_sends_gets_an_answer_not_a_server_error(
    app: Any, number: int
) -> None:
    """Issue 18, case 7: every integer (huge, negative, 2**63, 2**64, -2**63-1) in a
    cursor, a query parameter, a subscription's ``after`` or a path is a 4xx (or a 503
    while NATS is away), a problem document, never a 500."""
    transport = httpx.ASGITransport(app=app)
    subscription = {"url": "https://example.com/h", "event_type": "sales.OrderPlaced",
                    "secret": "whsec_" + "A" * 32, "after": number}  # fmt: skip
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        sent = [
            await http.get("/shipping/shipments", params={"cursor": forged_cursor(["x", number])}),
            await http.get("/shipping/shipments", params={"cursor": forged_cursor([number, "y"])}),
            await http.get("/shipping/shipments", params={"limit": str(number)}),
            await http.get(f"/shipping/shipments/{number}"),
            await http.get(f"/billing/accounts/{number}"),
            await http.post("/webhooks/sales/subscriptions", json=subscription),
            await http.post(f"/webhooks/sales/dead-letters/{number}/{number}/retry"),
            await http.get(f"/webhooks/sales/subscriptions/{number}"),
        ]
    for response in sent:
        assert response.status_code < 500 or response.status_code == 503, response.text
        if response.status_code >= 400:
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["detail"]


# -- the CLI: arguments -------------------------------------------------------------------

words = st.sampled_from(
    ["relay", "project", "replay", "rewind", "dlq", "status", "serve", "--from-seq", "--to-seq",
     "--from-time", "--partition", "--seq", "--stream", "list", "show", "drop",
     "--once", "--json", "-1", "0", "x", "2026-13-45", "sales", "shipping", "nowhere", "--port",
     "--nats-url", "--data-dir", "--system", "a:b", "--bogus"]
)  # fmt: skip


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(argv=st.lists(words | st.text(max_size=12), max_size=6))
def test_any_command_line_is_parsed_or_refused_with_usage(argv: list[str]) -> None:
    """The parser never raises anything but argparse's exit (code 2 with a usage line)."""
    command_line = parser()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            command_line.parse_args(argv)
        except SystemExit as exc:
            assert exc.code in (0, 2)
            assert "Traceback" not in err.getvalue()


@pytest.mark.parametrize(
    "argv",
    [
        ["replay", "shipping", "--from-seq", "-4"],
        ["replay", "shipping", "--from-time", "yesterday"],
        ["rewind", "shipping", "--to-seq", "-1"],
        ["project", "nowhere"],
        ["relay", "nowhere"],
        ["--system", "no.such.module:system", "status"],
        ["--system", "nocolon", "status"],
        ["project", "shipping", "--partition", "3"],  # gone with slices: a usage error
        ["dlq", "show", "shipping"],
    ],
)
def test_bad_command_lines_end_in_one_readable_line(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = cli.main(["--data-dir", str(tmp_path), "--nats-url", "nats://127.0.0.1:1", *argv])
    except SystemExit as exc:  # argparse refusing the usage
        code = exc.code  # type: ignore[assignment]
    err = capsys.readouterr().err.strip()
    assert code in (1, 2), err
    assert "Traceback" not in err
    *usage, line = err.splitlines()  # one line says why; argparse puts its usage first
    assert not usage or (usage[0].startswith("usage: ") and "error: " in line), err
    assert all(u.startswith(("usage: ", " ")) for u in usage), err
