"""Health, readiness and metrics of an API process.

``/health/live`` says the process answers; ``/health/ready`` says it can serve what it
promises (and, for ``serve --standby-relay``, which of its relays stand by and which
relay): NATS answers, the in-process relays (and policies) are running, no relay,
projector or reactor on the data folder reports a problem (it cannot reach NATS, hangs,
or leaves a backlog unmoved: see :mod:`toolkit.ops.reports`), and every projection with
endpoints is within ``max_lag`` events of its streams (a load balancer stops sending
reads to an instance whose models fall behind), and every projection it serves has a
read model. It answers within a second whatever is away: a check that has not answered
by then is a reason (and is left running, one at a time, for the next probe to use).
``/metrics`` is Prometheus' text format, made by ``prometheus_client``: events applied
and lag per projection and stream, dead letters, relay lag, each policy's position and
lag per stream and dead letters by kind, and request latencies per known method, route
template (never the raw path: ids in label values would grow the registry without bound)
and status.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

Report = Callable[[], Awaitable[dict[str, Any]]]
"""The system's status (see :func:`toolkit.ops.status.collect`)."""

T = TypeVar("T")


class Bounded:
    """Checks awaited for at most a while each. A check still running is not started
    again: the next probe waits for the same one (a NATS connection being opened, a
    status collection on a database that does not answer), so probes never pile up."""

    def __init__(self) -> None:
        self._running: dict[str, asyncio.Task[Any]] = {}

    async def run(self, name: str, check: Callable[[], Awaitable[T]], within: float) -> T:
        """``check()``'s result; TimeoutError when it takes longer than ``within``."""
        task = self._running.get(name)
        if task is None or task.done():
            task = self._running[name] = asyncio.ensure_future(check())
        done, _ = await asyncio.wait({task}, timeout=max(within, 0.0))
        if not done:
            raise TimeoutError(f"{name} did not answer within {within:.1f}s")
        return task.result()  # type: ignore[no-any-return]


class Metrics:
    """The process's registry (one per app, so tests and several apps never collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "toolkit_http_request_seconds",
            "Time to answer an HTTP request, by route template and status",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.applied = Gauge(
            "toolkit_projection_checkpoint",
            "Last stream sequence a projection has applied (events applied so far)",
            ["projection", "stream"],
            registry=self.registry,
        )
        self.lag = Gauge(
            "toolkit_projection_lag_events",
            "Events on the stream a projection has not applied yet",
            ["projection", "stream"],
            registry=self.registry,
        )
        self.dead_letters = Gauge(
            "toolkit_projection_dead_letters",
            "Messages a projection has set aside with a reason",
            ["projection"],
            registry=self.registry,
        )
        self.policy_position = Gauge(
            "toolkit_policy_position",
            "Last stream sequence a policy has processed (its tracking record)",
            ["policy", "stream"],
            registry=self.registry,
        )
        self.policy_lag = Gauge(
            "toolkit_policy_lag_events",
            "Events on the stream a policy has not processed yet",
            ["policy", "stream"],
            registry=self.registry,
        )
        self.policy_dead_letters = Gauge(
            "toolkit_policy_dead_letters",
            "Messages a policy recorded without their effects, by kind (parked, rejected)",
            ["policy", "kind"],
            registry=self.registry,
        )
        self.relay_lag = Gauge(
            "toolkit_relay_lag_events",
            "Log events of a context not yet on its stream",
            ["context"],
            registry=self.registry,
        )

    def observe(self, report: dict[str, Any]) -> None:
        for name, context in report["contexts"].items():
            if "relay_lag" in context:
                self.relay_lag.labels(name).set(context["relay_lag"])
        for name, projection in report["projections"].items():
            self.dead_letters.labels(name).set(projection.get("dead_letters", 0))
            for stream, position in (projection.get("streams") or {}).items():
                self.applied.labels(name, stream).set(position["checkpoint"])
                self.lag.labels(name, stream).set(position["lag_events"])
        for name, policy in report.get("policies", {}).items():
            kinds = policy.get("dead_letter_kinds") or {}
            for kind in ("parked", "rejected"):
                self.policy_dead_letters.labels(name, kind).set(kinds.get(kind, 0))
            for stream, position in (policy.get("streams") or {}).items():
                self.policy_position.labels(name, stream).set(position["position"])
                self.policy_lag.labels(name, stream).set(position["lag_events"])

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """Times every HTTP request (a plain ASGI middleware: Starlette's
        ``BaseHTTPMiddleware`` costs a third of a small read's time)."""

        async def timed(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            status = 500

            async def sending(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, sending)
            finally:
                self.requests.labels(*labels(scope, status)).observe(time.perf_counter() - started)

        return timed


METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Methods a request's label names; any other is ``other``."""
UNMATCHED = "unmatched"
"""The route label of a request no route matched (a 404, or one refused before routing)."""


def labels(scope: Scope, status: int) -> tuple[str, str, str]:
    """A request's labels, from a closed set whatever a client sends: a known method or
    ``other``, the route's template (never the raw path) or ``unmatched``, and the status
    (made up metric labels would grow the registry, and ``/metrics``, without bound)."""
    method = scope["method"] if scope["method"] in METHODS else "other"
    route = getattr(scope.get("route"), "path", None)
    return method, route if isinstance(route, str) and route else UNMATCHED, str(status)


def router(
    metrics: Metrics,
    report: Report,
    *,
    nats_ok: Callable[[], Awaitable[str | None]],
    relays_ok: Callable[[], str | None],
    models_ok: Callable[[], Awaitable[str | None]] | None = None,
    max_lag: int,
    within: float = 0.9,
    relays: Callable[[], dict[str, str]] | None = None,
) -> APIRouter:
    """``nats_ok``, ``relays_ok`` and ``models_ok`` say why the API is not ready (None
    when it is); ``within`` bounds the readiness answer's time. ``relays`` says what each
    relay run here does (``serve --standby-relay``: 'standing by' or 'relaying'), shown
    in the answer either way: a standby is ready, it serves what the others serve."""
    api = APIRouter(tags=["health"])
    bounded = Bounded()

    async def reason(name: str, check: Callable[[], Awaitable[str | None]]) -> str | None:
        try:
            return await bounded.run(name, check, within)
        except TimeoutError:
            return f"{name} did not answer within {within:.1f}s"
        except Exception as exc:  # any failure of a check means not ready
            return f"{name} failed: {exc or type(exc).__name__}"

    @api.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "live"}

    @api.get("/health/ready", responses={503: {"description": "not ready, with the reasons"}})
    async def ready() -> JSONResponse:
        deadline = time.monotonic() + within

        def left() -> float:
            return deadline - time.monotonic()

        checks = [("NATS", nats_ok)] + ([("the read models", models_ok)] if models_ok else [])
        found = await asyncio.gather(*(reason(name, check) for name, check in checks))
        reasons = [r for r in (*found, relays_ok()) if r]
        status = None
        if not reasons:
            try:
                status = await bounded.run("status", report, left())
            except TimeoutError:
                reasons.append(f"the status of relays and projections took over {within:.1f}s")
            except Exception as exc:
                reasons.append(f"the status of relays and projections failed: {exc}")
        if status is not None:
            reasons += status["problems"]  # relays and projectors that make no progress
            for name, projection in status["projections"].items():
                for stream, position in (projection.get("streams") or {}).items():
                    if position["lag_events"] > max_lag:
                        reasons.append(
                            f"projection {name} is {position['lag_events']} events behind "
                            f"{stream} (at most {max_lag})"
                        )
        roles = {} if relays is None else {"relays": relays()}
        if reasons:
            return JSONResponse(
                {"status": "not ready", "reasons": reasons} | roles, status_code=503
            )
        return JSONResponse({"status": "ready"} | roles)

    @api.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        with contextlib.suppress(Exception):  # without a report, latencies still serve
            metrics.observe(await bounded.run("status", report, within))
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return api
