"""Trace context across the asynchronous boundary: W3C ``traceparent``/``tracestate``
read strictly, and OpenTelemetry spans when it is installed.

Every command that comes in over HTTP or through a command queue belongs to a trace: the
caller's (a well-formed ``traceparent`` header) or a new one. Its events are stored with
it (:mod:`toolkit.write.causation`) and published with it, as the envelope's
``correlationid`` (the trace id), ``traceparent`` and ``tracestate`` (CloudEvents'
distributed-tracing extension); a policy's effects continue the trace of the message
they react to. That much costs two strings an event and needs nothing installed.

With OpenTelemetry's API importable (the ``otel`` extra) and ``TOOLKIT_TRACING`` not
``off``, the toolkit also makes spans, each a child of the trace context it was handed:
the HTTP request, each save, the relay's publishing of a page, a projector's applying of
a batch (the page's or batch's span continues its first traced message's trace and links
the others) and a policy's reaction. The events a span saves name it as their parent.
Without it (or with ``TOOLKIT_TRACING=off``) this module imports nothing of OpenTelemetry
and the hot paths test one global.

Nothing from a header reaches the log unchecked: a ``traceparent`` is version 00 with
lower-case hex ids, not all zeros, or it is ignored and a new trace started; a
``tracestate`` is kept only when well-formed, at most 512 characters and 32 members.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final, NamedTuple

ENV: Final = "TOOLKIT_TRACING"
"""``off`` makes no spans and imports nothing of OpenTelemetry; ``on`` requires it (an
error when it is not installed); unset (or ``auto``): spans when it is importable."""
TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
MAX_TRACESTATE: Final = 512
MAX_TRACESTATE_MEMBERS: Final = 32
MAX_LINKS: Final = 128
"""Links a page's or batch's span keeps (OpenTelemetry's default limit too)."""

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_NO_TRACE = "0" * 32
_NO_SPAN = "0" * 16
_KEY = r"(?:[a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
_MEMBER = re.compile(
    rf"({_KEY})=([\x20-\x2b\x2d-\x3c\x3e-\x7e]{{0,255}}[\x21-\x2b\x2d-\x3c\x3e-\x7e])"
)


Attributes = dict[str, str | int] | None


class Trace(NamedTuple):
    """A command's trace context, as recorded with its events."""

    traceparent: str
    tracestate: str | None = None

    @property
    def trace_id(self) -> str:
        return self.traceparent[3:35]

    @property
    def parent_id(self) -> str:
        return self.traceparent[36:52]


def parse_traceparent(header: str | None) -> str | None:
    """``header`` as a W3C ``traceparent`` of version 00, or None when it is anything else
    (another version, upper-case hex, an all-zero id, extra text)."""
    if not header or len(header) > 64:
        return None
    header = header.strip(" \t")
    match = _TRACEPARENT.fullmatch(header)
    if match is None or match[1] == _NO_TRACE or match[2] == _NO_SPAN:
        return None
    return header


def parse_tracestate(header: str | None) -> str | None:
    """``header`` as a W3C ``tracestate``, its members joined by commas, or None when it is
    malformed, longer than 512 characters, of more than 32 members or names a key twice."""
    if not header or len(header) > MAX_TRACESTATE:
        return None
    members: list[str] = []
    keys: set[str] = set()
    for part in header.split(","):
        part = part.strip(" \t")
        if not part:
            continue
        match = _MEMBER.fullmatch(part)
        if match is None or match[1] in keys:
            return None
        keys.add(match[1])
        members.append(part)
    if not members or len(members) > MAX_TRACESTATE_MEMBERS:
        return None
    return ",".join(members)


_ids = random.Random()
"""Where new trace and span ids come from: random as W3C asks, not secret (OpenTelemetry's
SDK makes its ids the same way). Not ``os.urandom``: a system call that lets go of the
GIL, and in a process whose threads run commands the event loop then waited for it up to
the switch interval (5 ms) a request, twice. A generator of the toolkit's own, so that a
user's ``random.seed`` does not make ids repeat; seeded anew in a forked child."""
os.register_at_fork(after_in_child=_ids.seed)


def new_traceparent() -> str:
    """A new trace, sampled, whose parent id names the unit of work starting it."""
    bits = _ids.getrandbits
    trace_id, parent_id = bits(128), bits(64)
    if not trace_id or not parent_id:  # (2**-64: never, but valid always)
        return new_traceparent()
    return f"00-{trace_id:032x}-{parent_id:016x}-01"


def new_span_id() -> str:
    return f"{_ids.getrandbits(64):016x}"


def incoming(
    traceparent: Sequence[str] | str | None, tracestate: Sequence[str] | str | None
) -> Trace:
    """The trace a command continues: the caller's when its headers are well-formed (one
    ``traceparent``; ``tracestate`` headers are joined, as W3C says), else a new one."""
    if not isinstance(traceparent, str):
        traceparent = traceparent[0] if traceparent is not None and len(traceparent) == 1 else None
    parent = parse_traceparent(traceparent)
    if parent is None:
        return Trace(new_traceparent())
    if tracestate is not None and not isinstance(tracestate, str):
        tracestate = ",".join(tracestate)
    return Trace(parent, parse_tracestate(tracestate))


# OpenTelemetry, imported on first use only when enabled.

_undecided: Final = object()
_tracer: Any = _undecided
_global: Any = None
"""OpenTelemetry's global tracer, when :data:`_tracer` is it."""


def enabled() -> bool:
    """Whether spans are made (decided once: see :data:`ENV`). With OpenTelemetry's
    global tracer, only while a tracer provider is set globally: before one is, every
    span would record nothing, and the toolkit's would cost each request some 0.1 ms."""
    tracer = _tracer
    if tracer is _undecided:
        tracer = _decide()
    if tracer is _global and tracer is not None:
        return _provider_set()
    return tracer is not None


def _provider_set() -> bool:
    """Whether a tracer provider is set globally (for good: it cannot be unset)."""
    global _global
    from opentelemetry import trace  # (imported already: the global tracer is its)

    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return False
    _global = None  # asked no more
    return True


def configure(tracer_provider: Any = None, *, enabled: bool | None = None) -> None:
    """Make spans with ``tracer_provider`` (an OpenTelemetry SDK's: tests pass an
    in-memory one, leaving the global provider alone), or decide again from
    :data:`ENV` (``enabled=None``), or turn spans off (``enabled=False``)."""
    global _tracer, _global
    _global = None
    if enabled is False:
        _tracer = None
    elif tracer_provider is not None:
        _tracer = tracer_provider.get_tracer("toolkit")
    else:
        _tracer = _undecided


def _decide() -> Any:
    global _tracer, _global
    setting = os.environ.get(ENV, "auto").strip().lower()
    if setting in ("off", "0", "false", "no"):
        _tracer = None
    elif setting in ("on", "1", "true", "yes", "otel"):
        from opentelemetry import trace  # required: ImportError says what to install

        _tracer = _global = trace.get_tracer("toolkit")
    elif importlib.util.find_spec("opentelemetry") is not None:
        from opentelemetry import trace

        _tracer = _global = trace.get_tracer("toolkit")
    else:
        _tracer = None
    return _tracer


class Span:
    """A span being recorded; :attr:`traceparent` is what the work inside it names as its
    parent (the span's own context, or the context handed in when the span records
    nothing)."""

    __slots__ = ("otel", "traceparent", "tracestate")

    def __init__(self, otel: Any, traceparent: str, tracestate: str | None) -> None:
        self.otel = otel
        self.traceparent = traceparent
        self.tracestate = tracestate

    @property
    def trace(self) -> Trace:
        return Trace(self.traceparent, self.tracestate)

    def rename(self, name: str) -> None:
        self.otel.update_name(name)

    def set(self, key: str, value: str | int | bool) -> None:
        self.otel.set_attribute(key, value)


@contextlib.contextmanager
def span(
    name: str,
    parent: Trace,
    *,
    kind: str = "internal",
    links: Iterable[str] = (),
    attributes: Attributes = None,
) -> Iterator[Span]:
    """A span named ``name``, child of ``parent``, current inside the block (spans a
    user's code starts there nest in it); ``links``: traceparents it also belongs to.
    Call only when :func:`enabled`."""
    from opentelemetry import trace

    tracer = _tracer
    context = trace.set_span_in_context(trace.NonRecordingSpan(_span_context(*parent)))
    link, context_of, flags = trace.Link, trace.SpanContext, trace.TraceFlags
    linked = [  # (the relay's hot path with spans on: a page links up to MAX_LINKS events)
        link(context_of(int(t[3:35], 16), int(t[36:52], 16), True, flags(int(t[53:55], 16))))
        for t in itertools.islice(links, MAX_LINKS)
    ]
    with tracer.start_as_current_span(
        name,
        context=context,
        kind=getattr(trace.SpanKind, kind.upper()),
        links=linked,
        attributes=attributes,
    ) as otel:
        own = otel.get_span_context()
        if own.is_valid:
            yield Span(otel, _traceparent(own), parent.tracestate)
        else:
            yield Span(otel, parent.traceparent, parent.tracestate)


def _traceparent(own: Any) -> str:
    return f"00-{own.trace_id:032x}-{own.span_id:016x}-{int(own.trace_flags):02x}"


def current() -> Trace | None:
    """The span current here (another instrumentation's: FastAPI's own server span), if
    one is valid. Call only when :func:`enabled`."""
    from opentelemetry import trace

    own = trace.get_current_span().get_span_context()
    if not own.is_valid:
        return None
    state = own.trace_state.to_header() if own.trace_state else None
    return Trace(_traceparent(own), parse_tracestate(state))


def _span_context(traceparent: str, tracestate: str | None) -> Any:
    from opentelemetry import trace

    state = trace.TraceState.from_header([tracestate]) if tracestate else None
    return trace.SpanContext(
        int(traceparent[3:35], 16),
        int(traceparent[36:52], 16),
        is_remote=True,
        trace_flags=trace.TraceFlags(int(traceparent[53:55], 16)),
        trace_state=state,
    )


def batch_span(
    name: str, traceparents: Iterable[str | None], *, kind: str, attributes: dict[str, str | int]
) -> contextlib.AbstractContextManager[Span | None]:
    """The span of a batch of messages (a relay's page, a projector's batch): a child of
    its first traced message, linked to the others' spans, each once (a save's events
    share its span: a page of a thousand of them links one span, not a thousand times
    the same, and pays for one link, a few microseconds each); none when no message is
    traced."""
    traced = iter(dict.fromkeys(t for t in traceparents if t))  # (in order, each once)
    first = next(traced, None)
    if first is None:
        return contextlib.nullcontext()
    return span(name, Trace(first), kind=kind, links=traced, attributes=attributes)
