"""W3C trace context read strictly: whatever a client sends, a command either continues a
well-formed trace or starts a new one, never errors, and nothing unchecked reaches the
log. Causes stored before traces were kept (two ids) still read; a translator's handler
that asks for the envelope gets its ids and trace."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from eventsourcing.persistence import Tracking
from hypothesis import given
from hypothesis import strategies as st

from tests.integration.test_policies import Depot
from toolkit import tracing, wire
from toolkit.read.reader import StreamMessage
from toolkit.read.translator import Translator
from toolkit.wire.contracts import IntegrationEvent, contract
from toolkit.write.causation import KEY, CausalMapper, Causation, caused

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
FORM = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def test_a_well_formed_traceparent_is_continued_as_it_came() -> None:
    assert tracing.parse_traceparent(VALID) == VALID
    assert tracing.parse_traceparent(f" {VALID}\t") == VALID  # optional white space
    trace = tracing.incoming([VALID], ["a=1", "b=2"])
    assert trace == tracing.Trace(VALID, "a=1,b=2")  # tracestate headers joined
    assert (trace.trace_id, trace.parent_id) == (VALID[3:35], VALID[36:52])


def test_anything_else_starts_a_new_trace() -> None:
    for hostile in [
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # another version
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # no trace
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # no parent
        f"{VALID}-extra",
        f"{VALID}\n",
        "",
        "ff-" + "f" * 5000,
    ]:
        assert tracing.parse_traceparent(hostile) is None, hostile
        trace = tracing.incoming(hostile, "a=1")
        assert trace.traceparent != hostile and trace.tracestate is None
        assert FORM.fullmatch(trace.traceparent)
    assert tracing.incoming([VALID, VALID], None).traceparent != VALID  # two: neither


def test_a_tracestate_is_kept_only_when_well_formed_and_bounded() -> None:
    assert tracing.parse_tracestate("congo=t61rcWkgMzE, rojo=00f067aa0ba902b7") == (
        "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    )
    assert tracing.parse_tracestate("tenant@vendor=x") == "tenant@vendor=x"
    members = ",".join(f"k{i}=v" for i in range(33))
    for malformed in ["a", "A=1", "a=1,a=2", "a=b=c", "a=,b=1", members, "a=" + "x" * 600]:
        assert tracing.parse_tracestate(malformed) is None, malformed


@given(st.text(max_size=200), st.text(max_size=700))
def test_hostile_headers_never_error_and_never_reach_the_log_unchecked(
    traceparent: str, tracestate: str
) -> None:
    trace = tracing.incoming(traceparent, tracestate)
    assert FORM.fullmatch(trace.traceparent)
    assert trace.traceparent == traceparent.strip(" \t") or trace.tracestate is None
    if trace.tracestate is not None:
        assert len(trace.tracestate) <= tracing.MAX_TRACESTATE
        assert trace.tracestate.count(",") < tracing.MAX_TRACESTATE_MEMBERS
        assert tracing.parse_tracestate(trace.tracestate) == trace.tracestate


@given(st.binary(max_size=300))
def test_a_stranger_s_envelope_yields_a_well_formed_traceparent_or_none(body: bytes) -> None:
    found = wire.envelope.traceparent_of(body)
    assert found is None or FORM.fullmatch(found)


def test_causes_stored_before_traces_were_kept_still_read(tmp_path: Path) -> None:
    depot = Depot(data_dir=tmp_path)
    try:
        with depot.processing(Tracking("parcels:shop", 1), caused_by=Causation("shop:1", "c")):
            depot.pack("o1", "tea")
        trace = tracing.Trace(VALID, "a=1")
        with caused(Causation("http:1", trace.trace_id, *trace)):
            depot.pack("o2", "jam")
        first, second = depot.recorder.select_notifications(start=1, limit=2)
        mapper = depot.mapper
        assert isinstance(mapper, CausalMapper)
        assert msgspec.json.decode(first.state)[KEY] == ["shop:1", "c"]  # as before
        assert msgspec.json.decode(second.state)[KEY] == ["http:1", VALID[3:35], VALID, "a=1"]
        assert mapper.decode(first)[1] == Causation("shop:1", "c", None, None)
        assert mapper.decode(second)[1] == Causation("http:1", VALID[3:35], VALID, "a=1")
    finally:
        depot.close()


@contract("shop.OrderPlaced", version=1)
class Placed(IntegrationEvent, frozen=True, kw_only=True):
    order_id: str


def test_a_handler_may_take_the_envelope_too() -> None:
    shop = Translator("shop")
    seen: list[Any] = []

    @shop.on(Placed)
    def placed(event: Placed, envelope: wire.EnvelopeHead) -> None:
        seen.append((event.order_id, envelope.correlationid, envelope.traceparent))

    body = wire.encode_envelope(
        wire.Envelope(
            specversion="1.0",
            id="shop:1",
            source="shop",
            type="shop.OrderPlaced",
            schemaversion=1,
            subject="o1",
            time=datetime(2026, 1, 1, tzinfo=UTC),
            aggregatetype="order",
            aggregateversion=1,
            logposition=1,
            datacontenttype="application/json",
            correlationid=VALID[3:35],
            traceparent=VALID,
            data=Placed(order_id="o1"),
        )
    )
    shop.translate(StreamMessage("shop", 1, "shop.order.o1.OrderPlaced", {}, body))
    assert seen == [("o1", VALID[3:35], VALID)]


GLOBAL_PROVIDER = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from toolkit import tracing

assert not tracing.enabled()  # the API importable, no provider set: no span, none made
trace.set_tracer_provider(TracerProvider())
assert tracing.enabled()  # set later (after the first request, say): spans from then on
tracing.configure(enabled=False)
assert not tracing.enabled()
tracing.configure()
assert tracing.enabled()
"""


def test_spans_are_made_once_a_tracer_provider_is_set_globally() -> None:
    """OpenTelemetry's global tracer records nothing until a provider is set: until then
    the toolkit makes no span (each cost a request some 0.1 ms), and the trace is carried
    all the same. In a process of its own: a global provider is set for good."""
    env = {k: v for k, v in os.environ.items() if k != tracing.ENV}
    done = subprocess.run(
        [sys.executable, "-c", GLOBAL_PROVIDER], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr


def test_a_batch_span_continues_its_first_trace_and_links_each_other_span_once() -> None:
    """A relay's page holds a save's events, which share the save's span: the page's span
    links that span once, not once an event; other traces each once, in order; untraced
    messages count for nothing, and a batch of none makes no span."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure(provider)
    try:
        first, second, third = (tracing.new_traceparent() for _ in range(3))
        page = [None, first, first, second, None, first, third, second, third] * 100
        with tracing.batch_span("sales publish", page, kind="producer", attributes={}):
            pass
        with tracing.batch_span("sales publish", [None, None], kind="producer", attributes={}):
            pass
    finally:
        tracing.configure()
        provider.shutdown()
    (made,) = exporter.get_finished_spans()
    assert made.parent is not None and made.context is not None
    assert f"{made.parent.trace_id:032x}" == first[3:35]
    assert f"{made.parent.span_id:016x}" == first[36:52]
    assert made.context.trace_id == made.parent.trace_id
    linked = [f"{link.context.trace_id:032x}-{link.context.span_id:016x}" for link in made.links]
    assert linked == [second[3:52], third[3:52]]


def test_new_ids_are_well_formed_and_never_repeat_across_seeds_and_forks() -> None:
    """New trace and span ids come from the toolkit's own generator: a user seeding
    ``random`` does not make them repeat, and a forked child (a server's workers) makes
    other ids than its parent."""
    import random

    random.seed(7)
    first = [tracing.new_traceparent() for _ in range(100)]
    random.seed(7)
    again = [tracing.new_traceparent() for _ in range(100)]
    assert len(set(first + again)) == 200
    assert all(FORM.fullmatch(t) and t.endswith("-01") for t in first)
    spans = {tracing.new_span_id() for _ in range(100)}
    assert len(spans) == 100 and all(re.fullmatch("[0-9a-f]{16}", s) for s in spans)

    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        os.write(write, tracing.new_traceparent().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    theirs = os.read(read, 100).decode()
    os.close(read)
    assert FORM.fullmatch(theirs) and theirs != tracing.new_traceparent()
