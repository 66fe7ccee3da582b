"""uvicorn's HTTP/1.1 protocol, refusing a request it cannot parse with a problem
document that says why, like every other refusal of the API (uvicorn's own is a plain-text
"Invalid HTTP request received.").

``toolkit serve`` parses with httptools (llhttp, in C), a dependency (h11, in Python, cost
serve 10-20% of its orders a second). llhttp refuses what h11 passed on to the app (a
control character in a header's value, a method it does not know, ``Content-Length``
beside ``Transfer-Encoding``): the refusal says which, naming a header but never quoting
its value (it may be a secret). llhttp bounds no request's head, where h11 stops at 16 KiB:
here a head still incomplete beyond ``h11_max_incomplete_event_size`` (16 KiB unless
configured) is refused with 431, as h11 refuses it (a whole head in one read, up to
256 KiB, is taken, as h11 takes it: a long URL is the app's to judge).
"""

from __future__ import annotations

from http import HTTPStatus

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from toolkit.http.problems import problem_body

HEAD_LIMIT = 16 * 1024
"""The largest request head (its line and headers) taken unless uvicorn's
``h11_max_incomplete_event_size`` says otherwise: h11's default."""

_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
"""The bytes of a method or a header's name (RFC 9110's ``tchar``)."""
_VALUE = frozenset(b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100)))
"""The bytes of a header's value (RFC 9110: no control character but tab)."""
_TARGET = frozenset(range(0x21, 0x7F))
"""The bytes of a request's target (a URL: no space, no control, no non-ASCII)."""
_METHODS = frozenset(
    b"GET HEAD POST PUT DELETE CONNECT OPTIONS TRACE PATCH QUERY COPY LOCK MKCOL MOVE "
    b"PROPFIND PROPPATCH SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT "
    b"MERGE M-SEARCH NOTIFY SUBSCRIBE UNSUBSCRIBE PURGE MKCALENDAR LINK UNLINK SOURCE".split()
)
"""The methods llhttp parses (it refuses any other)."""
_BODY = "the request's body is not framed as its headers say (Content-Length, chunks)"
_SHOWN = 32
"""At most this many characters of a method or a header's name in a refusal."""


def why(received: bytes) -> str:
    """What is wrong with the request at the start of ``received`` (the bytes that came
    with the parser's refusal), in a sentence that quotes no header's value."""
    lines = received.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    method, _, rest = lines[0].partition(b" ")
    target, _, version = rest.partition(b" ")
    if not method or not _TOKEN.issuperset(method) or not version.startswith(b"HTTP/1."):
        return "the request does not begin with a request line ('METHOD /target HTTP/1.1')"
    if not target or not _TARGET.issuperset(target):
        return "the request's target holds a byte a URL may not (a space, a control character)"
    names = set()
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or not _TOKEN.issuperset(name):
            return "the request has a header line that is not a name, a colon and a value"
        shown = name[:_SHOWN].decode("ascii")
        if not _VALUE.issuperset(value):
            return f"header {shown} holds a control character, which a header's value may not"
        names.add(name.lower())
    if {b"content-length", b"transfer-encoding"} <= names:
        return "the request has both Content-Length and Transfer-Encoding, which RFC 9112 forbids"
    if method not in _METHODS:
        return f"method {method[:_SHOWN].decode('ascii')} is not one this server knows"
    return "the request is not valid HTTP/1.1"


def refusal(status: int, detail: str, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """The whole response to a request refused before the app saw it (the connection
    closes after it)."""
    body = problem_body(status, detail)
    head = [b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode())]
    for name, value in default_headers:
        head += [name, b": ", value, b"\r\n"]
    head += [
        b"content-type: application/problem+json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n\r\n",
    ]
    return b"".join(head) + body


class RefusingProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing with a problem document (pass it as
    ``uvicorn.Config(http=...)``)."""

    _received = b""  # (the head so far, or the last read: what a refusal is about)
    _heading = False  # (a request's head begun and not complete)
    _head = 0  # (its bytes so far)
    _read = 0  # (the bytes of the read being parsed)
    _pipelined = False  # (a request ended in the read being parsed)
    _in_body = False

    def data_received(self, data: bytes) -> None:
        if self._heading:
            self._received += data
            self._head += len(data)
        else:
            self._received = data
        self._read, self._pipelined = len(data), False
        super().data_received(data)
        if self._heading and self._head > self._limit() and not self.transport.is_closing():
            self._refuse(431, f"the request's head is larger than {self._limit():,} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # (begun in a read where another request ended, its part of the read is not
        # told: counted from the next read, a read (up to 256 KiB) more at most)
        self._heading, self._head = True, 0 if self._pipelined else self._read

    def on_headers_complete(self) -> None:
        self._heading, self._in_body = False, True
        super().on_headers_complete()

    def _limit(self) -> int:
        return int(self.config.h11_max_incomplete_event_size or HEAD_LIMIT)

    def on_message_complete(self) -> None:
        self._in_body, self._pipelined = False, True
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:  # (uvicorn's, on a parser's refusal)
        self._refuse(400, _BODY if self._in_body else why(self._received))

    def _refuse(self, status: int, detail: str) -> None:
        self._heading = self._in_body = False
        self.transport.write(refusal(status, detail, self.server_state.default_headers))
        self.transport.close()
