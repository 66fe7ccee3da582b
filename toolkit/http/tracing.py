"""Each command request belongs to a trace: the caller's ``traceparent`` (when it is
well-formed: :mod:`toolkit.tracing`) or a new one, which the events it saves carry.

A plain ASGI middleware, so that any command endpoint (the example's routers, a user's,
the command queues' submissions) is covered without being written for it. Requests that
run no command (``GET``, ``HEAD``, ``OPTIONS``) pass untouched. Inside a command request
the cause of every save is ``http:<request id>``, its correlation id the trace id; with
OpenTelemetry on, the request is a server span (the request id is its span id) and the
saves are its children: FastAPI's own when it makes one (it does once a tracer provider
is set globally), else one made here.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from toolkit import tracing
from toolkit.write.causation import Causation, caused

READS = frozenset({"GET", "HEAD", "OPTIONS"})


def middleware(app: ASGIApp) -> ASGIApp:
    """``app`` with each command request's trace set for its saves."""

    async def traced(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in READS:
            await app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        trace = tracing.incoming(
            headers.getlist(tracing.TRACEPARENT), headers.getlist(tracing.TRACESTATE)
        )
        if not tracing.enabled():
            request = tracing.new_span_id()
            with caused(Causation(f"http:{request}", trace.trace_id, *trace)):
                await app(scope, receive, send)
            return
        framework = tracing.current()  # FastAPI's server span, when it makes one
        if framework is not None:
            with caused(Causation(f"http:{framework.parent_id}", framework.trace_id, *framework)):
                await app(scope, receive, send)
            return
        method = scope["method"]
        attributes: dict[str, str | int] = {
            "http.request.method": method,
            "url.path": scope.get("path", ""),
        }
        with tracing.span(method, trace, kind="server", attributes=attributes) as span:

            async def sending(message: Message) -> None:
                if message["type"] == "http.response.start":
                    span.set("http.response.status_code", int(message["status"]))
                await send(message)

            own = span.trace
            with caused(Causation(f"http:{own.parent_id}", own.trace_id, *own)):
                await app(scope, receive, sending)
            route = getattr(scope.get("route"), "path", None)
            span.rename(f"{method} {route}" if route else method)

    return traced
