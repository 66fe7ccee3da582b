"""Requests the HTTP parser refuses before the app sees them (toolkit.http.protocols): each
gets a problem document that says why, naming a header but never quoting its value, and
the connection closes; a head beyond 16 KiB is refused with 431 however slowly it comes;
nothing a client sends gets a 5xx, and the server answers the next client as before.
First through ``toolkit serve`` itself, then any bytes, against its protocol."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import uvicorn
from fastapi import FastAPI, Request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import free_port
from toolkit.http.protocols import RefusingProtocol, why
from toolkit.nats.embedded import EmbeddedServer

pytestmark = pytest.mark.timeout(120)

GOOD = b"GET /health/live HTTP/1.1\r\nHost: a\r\n\r\n"

REFUSED = {
    "control byte in a header": (
        b"POST /sales/customers HTTP/1.1\r\nHost: a\r\nIdempotency-Key: k\x01ey\r\n\r\n",
        400,
        "header Idempotency-Key holds a control character",
    ),
    "header line without a colon": (
        b"GET / HTTP/1.1\r\nHost: a\r\nbroken\r\n\r\n",
        400,
        "not a name, a colon and a value",
    ),
    "made-up method": (b"FROB / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "method FROB is not one"),
    "NUL in the target": (b"GET /a\x00b HTTP/1.1\r\nHost: a\r\n\r\n", 400, "target holds a byte"),
    "TLS on the plain port": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", 400, "request line"),
    "Content-Length and Transfer-Encoding": (
        b"POST /sales/customers HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        "both Content-Length and Transfer-Encoding",
    ),
    "bad chunk": (
        b"POST /sales/customers HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        400,
        "body is not framed",
    ),
    "one huge header": (
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n",
        431,
        "head is larger than 16,384 bytes",
    ),
    "many headers": (
        b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(5000)),
        431,
        "head is larger than",
    ),
}


def exchange(port: int, request: bytes, *, pieces: int = 1, half_close: bool = True) -> bytes:
    """What the server answers ``request`` (sent in ``pieces``, then the connection
    half-closed, unless not) until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        step = -(-len(request) // pieces)
        with contextlib.suppress(OSError):  # (refused midway: reset, pipe, not connected)
            for start in range(0, len(request), step):
                sock.sendall(request[start : start + step])
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
        return answer


def parsed(answer: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.split(b"\r\n")
    headers = dict(line.lower().split(b": ", 1) for line in lines)
    return int(status_line.split()[1]), headers, body


def responses(answer: bytes) -> Iterator[tuple[int, dict[bytes, bytes], bytes]]:
    """Each response in ``answer`` (requests may come several on one connection)."""
    while answer:
        code, headers, rest = parsed(answer)
        size = int(headers.get(b"content-length", b"0"))
        yield code, headers, rest[:size]
        answer = rest[size:]


def one_response(sock: socket.socket) -> tuple[int, dict[bytes, bytes], bytes]:
    """The next whole response on ``sock`` (a connection kept alive)."""
    answer = b""
    while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < int(
        parsed(answer)[1].get(b"content-length", b"0")
    ):
        chunk = sock.recv(65536)
        assert chunk, answer
        answer += chunk
    return parsed(answer)


def assert_refused(answer: bytes, status: int, said: str) -> None:
    code, headers, body = parsed(answer)
    assert code == status, answer[:300]
    assert headers[b"content-type"] == b"application/problem+json"
    assert headers[b"connection"] == b"close"
    problem = orjson.loads(body)
    assert problem["status"] == status and said in problem["detail"], problem


@pytest.fixture
def serve(tmp_path: Path, nats_server: EmbeddedServer) -> Iterator[int]:
    """``toolkit serve`` (its relays elsewhere) on a free port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "TOOLKIT_"))}
    env |= {"TOOLKIT_DATA_DIR": str(tmp_path / "data"), "NATS_URL": nats_server.url}
    argv = [sys.executable, "-m", "toolkit", "serve", "--port", str(port), "--no-relay"]
    process = subprocess.Popen(argv, env=env, cwd=tmp_path, stderr=subprocess.PIPE)
    try:
        while process.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
        assert process.poll() is None, process.communicate()[1]
        yield port
    finally:
        process.terminate()
        process.wait(15)


def test_toolkit_serve_refuses_what_it_cannot_parse_with_problem_documents(serve: int) -> None:
    for case, (request, status, said) in REFUSED.items():
        answer = exchange(serve, request)
        assert answer, case
        assert_refused(answer, status, said)
    slow = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Slow: vvvvvvvvvvvvvvvvvvvvvvvv\r\n" * 1000
    assert_refused(exchange(serve, slow, pieces=500), 431, "head is larger than")
    secret = b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer s3cr3t\x7f\r\n\r\n"
    answer = exchange(serve, secret)
    assert_refused(answer, 400, "header Authorization holds a control character")
    assert b"s3cr3t" not in answer
    code, _, body = parsed(exchange(serve, GOOD))
    assert code == 200, body  # and it serves on
    last = GOOD.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    pipelined = responses(exchange(serve, GOOD * 2 + last, half_close=False))
    assert [code for code, _, _ in pipelined] == [200, 200, 200]  # (each head counted alone)
    with socket.create_connection(("127.0.0.1", serve), timeout=10) as sock:  # kept alive
        sock.sendall(GOOD)
        assert one_response(sock)[0] == 200
        with contextlib.suppress(OSError):  # (refused before all of it is sent)
            sock.sendall(GOOD.replace(b"\r\n\r\n", b"\r\nX-Big: " + b"a" * 10**6 + b"\r\n\r\n"))
        assert one_response(sock)[0] == 431


app = FastAPI()


@app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
async def echo(request: Request) -> dict[str, int]:
    return {"headers": len(request.headers), "body": len(await request.body())}


@pytest.fixture(scope="module")
def echo_server() -> Iterator[int]:
    """A minimal app behind the toolkit's protocol, in a thread of its own."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="critical", http=RefusingProtocol
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=asyncio.run, args=(server.serve(),), daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive()
            threading.Event().wait(0.01)
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


_REQUEST = st.builds(
    lambda method, target, headers, body: (
        method + b" " + target + b" HTTP/1.1\r\n"
        + b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        + b"content-length: %d\r\n\r\n" % len(body) + body
    ),
    st.sampled_from([b"GET", b"POST", b"PUT", b"FROB", b"G ET", b""]),
    st.sampled_from([b"/", b"/a?b=c", b"/%00", b"*", b"/\xc3\xa9", b"/a b", b"/..%2F..%2F"]),
    st.lists(st.tuples(st.binary(max_size=12), st.binary(max_size=40)), max_size=6),
    st.binary(max_size=64),
)  # fmt: skip


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(request=st.one_of(_REQUEST, st.binary(min_size=1, max_size=300)), pieces=st.integers(1, 4))
def test_any_bytes_get_an_answer_below_500_and_refusals_say_why(
    echo_server: int, request: bytes, pieces: int
) -> None:
    answer = exchange(echo_server, request, pieces=pieces)
    for code, headers, body in responses(answer):  # (none: no whole request, then the end)
        assert code < 500, answer[:300]
        if code in (400, 431):  # (the app answers any other request 200)
            assert headers[b"content-type"] == b"application/problem+json", answer[:300]
            assert orjson.loads(body)["detail"]
    code, _, _ = parsed(exchange(echo_server, GOOD))
    assert code == 200


@given(name=st.text(max_size=20), value=st.binary(max_size=60), junk=st.binary(max_size=60))
def test_a_refusal_never_quotes_a_header_value(name: str, value: bytes, junk: bytes) -> None:
    marker = b"S3CRET" + value
    head = b"GET / HTTP/1.1\r\n" + name.encode() + b": " + marker + b"\r\n" + junk
    detail = why(head)
    assert detail and "S3CRET" not in detail
