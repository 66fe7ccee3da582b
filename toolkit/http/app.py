"""The HTTP boundary: thin FastAPI read endpoints over projections, command endpoints of
contexts, and the app that serves them (REST at the edge of every context).

Read endpoints read the projection's current generation through a read-only connection;
no endpoint ever calls another context.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response

from toolkit import webhooks
from toolkit.backoff import Backoff
from toolkit.config import Settings
from toolkit.errors import MarkerError
from toolkit.http import caching, conditional, docs, feed, health, problems
from toolkit.http import tracing as http_tracing
from toolkit.http.asyncapi import router as asyncapi_router
from toolkit.http.auth import BearerAuth
from toolkit.http.consistency import (
    HEADER,
    Consistency,
    ConsistencyToken,
    InvalidToken,
    Satisfiable,
    passed,
)
from toolkit.http.contracts import router as contracts_router
from toolkit.http.health import Metrics
from toolkit.http.limits import BodyLimit
from toolkit.http.reactors import Reactors
from toolkit.nats.streams import StreamSpec
from toolkit.ops.reports import Reporter
from toolkit.readmodels import Connection, Generation, ReadModelHome
from toolkit.readmodels.backends import open_home
from toolkit.system import title_of
from toolkit.write.relay import Relay
from toolkit.write.relay_lock import RelayLease, relay_lease

if TYPE_CHECKING:
    from toolkit.system import System
    from toolkit.write.context import BoundedContext

log = logging.getLogger(__name__)


class ReadModel:
    """A FastAPI dependency: a read-only connection to a projection's current model.

    It also answers what every read endpoint shares: an ``ETag`` derived from the model's
    checkpoints (unchanged model, same tag: ``If-None-Match`` gets 304 once the endpoint
    has found what it names, :func:`toolkit.http.conditional.middleware`),
    ``Cache-Control``, the generation read (``X-Read-Model``), and read-your-writes: a
    request carrying a ``Consistency-Token`` waits, at most ``max_wait`` seconds (by
    default the app's ``TOOLKIT_CONSISTENCY_WAIT``; less with ``Prefer: wait=N``), until
    the model has applied the token's position, and otherwise gets 503 with
    ``Retry-After`` and the position reached. A token the model has passed is answered
    without NATS; one it can never meet is 400 at once.
    """

    def __init__(
        self,
        home: ReadModelHome,
        *,
        cache_control: str = "no-cache",
        max_wait: float | None = None,
    ) -> None:
        self.home = home
        self.cache_control = cache_control
        self.max_wait = max_wait

    async def __call__(self, request: Request, response: Response) -> AsyncIterator[Connection]:
        problems.reject_unknown_parameters(request)
        token = _consistency_token(request)
        if token is not None:
            self._check(token, request)
        db, current = self._open()
        reusable = False
        try:
            if token is not None:
                await self._wait_for(token, request, db)
            tag = caching.entity_tag(current.stem, caching.checkpoints(db))
            response.headers["ETag"] = tag
            response.headers["Cache-Control"] = self.cache_control
            response.headers["X-Read-Model"] = f"{self.home.name}/{current.stem}"
            yield db
            reusable = True
        except HTTPException:  # an answer, not a broken connection
            reusable = True
            raise
        finally:
            self.home.close_reader(db, reusable=reusable)

    def _open(self) -> tuple[Connection, Generation]:
        """A connection to the current generation (the home keeps idle ones for reuse)."""
        try:
            opened = self.home.open_reader()
        except MarkerError as exc:  # the operator's to mend: the log says how
            log.error("%s", exc)
            raise HTTPException(
                503,
                f"projection {self.home.name} cannot tell which read model readers use "
                "('toolkit status' says why)",
                headers={"Retry-After": "5"},
            ) from None
        if opened is None:
            raise HTTPException(
                503,
                f"projection {self.home.name} has no read model yet",
                headers={"Retry-After": "1"},
            )
        current, db = opened
        return db, current

    def _check(self, token: ConsistencyToken, request: Request) -> None:
        """400 at once for a token this model can never meet."""
        satisfiable = getattr(request.app.state, "satisfiable", None)
        if isinstance(satisfiable, Satisfiable):
            try:
                satisfiable.check(token, self.home.name)
            except InvalidToken as exc:
                raise HTTPException(400, str(exc)) from None

    async def _wait_for(self, token: ConsistencyToken, request: Request, db: Connection) -> None:
        preferred = _preferred_wait(request, float("inf"))  # a malformed one is 400 anyway
        if token.position == 0 or (passed(db, token.context) or 0) >= token.position:
            return  # applied already: the model says so, NATS need not
        link = getattr(request.app.state, "nats", None)
        if link is None:
            raise HTTPException(503, "consistency tokens need the API's NATS connection")
        client = await link.client()
        made_for, consistency = getattr(request.app.state, "consistency", (None, None))
        if consistency is None or made_for is not client:  # one per app and client: it
            consistency = Consistency(client.jetstream())  # keeps positions looked up
            request.app.state.consistency = (client, consistency)
        longest = self.max_wait
        if longest is None:
            longest = getattr(request.app.state, "consistency_wait", 2.0)
        wait = min(longest, preferred)
        try:
            done, applied = await consistency.wait(
                token, lambda stream: caching.checkpoint_of(db, stream), wait
            )
        except InvalidToken as exc:
            raise HTTPException(400, str(exc)) from None
        if not done:
            raise HTTPException(
                503,
                f"projection {self.home.name} has applied {token.context} up to log position "
                f"{applied.position} (stream sequence {applied.sequence}), not yet {token}",
                headers={"Retry-After": "1", HEADER: f"{token.context}:{applied.position}"},
            )


def _consistency_token(request: Request) -> ConsistencyToken | None:
    text = request.headers.get(HEADER)
    if text is None:
        return None
    try:
        return ConsistencyToken.parse(text)
    except InvalidToken as exc:
        raise HTTPException(400, str(exc)) from None


def _streams_read(system: System, projection: str) -> frozenset[str] | None:
    """The contexts ``projection`` reads (None: a router of a projection not declared)."""
    declared = system.projections.get(projection)
    return None if declared is None else frozenset(t.stream for t in declared.translators)


def _log_head(context: BoundedContext[Any]) -> int:
    """The context's last log position (its log is this process's to write)."""
    return int(context.recorder.max_notification_id() or 0)


def _has_model(home: ReadModelHome) -> str | None:
    """Why reads of ``home``'s projection cannot be answered (None: they can)."""
    try:
        opened = home.open_reader()
    except Exception as exc:  # a database away, a pointer the operator must mend
        return f"projection {home.name}'s read model cannot be read: {exc}"
    if opened is None:
        return f"projection {home.name} has no read model yet"
    home.close_reader(opened[1])
    return None


def _preferred_wait(request: Request, default: float) -> float:
    """``Prefer: wait=N`` (RFC 7240) shortens the wait for a consistency token."""
    for preference in request.headers.get("prefer", "").split(","):
        name, _, value = preference.strip().partition("=")
        if name.strip().lower() == "wait":
            try:
                return max(0.0, float(value))
            except ValueError:
                raise HTTPException(400, f"Prefer: wait={value!r} is not seconds") from None
    return default


def create_app(
    system: System,
    settings: Settings,
    *,
    relay: bool = True,
    policies: Sequence[str] = (),
    standby_relay: bool = False,
    tell: Callable[[str], None] = log.info,
) -> FastAPI:
    """The system's API: read endpoints of its projections, command endpoints of its
    contexts (whose relays run here unless ``relay`` is False), the event feed, health,
    readiness and metrics; bearer-token auth when ``settings.api_tokens`` is set. The
    ``policies`` named run here too (:mod:`toolkit.http.reactors`); the caller holds
    their locks. The caller holds the relays' locks too, unless ``standby_relay``: then
    each relay takes its lock here, standing by while another process holds it (as
    ``toolkit relay --standby``), and readiness says which relays stand by and which
    relay; ``tell`` is told when one stands by or takes over."""
    nats = feed.NatsLink(settings)  # opened on first use
    relay_link = feed.NatsLink(settings)  # the relays' own, open until they have stopped
    contexts = {name: system.context(name)(data_dir=settings.data_dir) for name in system.commands}
    homes = [open_home(settings, name) for name in system.routers]  # read models
    relay_trouble: dict[str, str] = {}
    """Why a context's relay is not running, by context."""
    relays: dict[str, Relay] = {}
    roles: dict[str, str] = {}
    """With ``standby_relay``: 'standing by' or 'relaying', by context."""
    reactors = Reactors(system, settings, policies, contexts, relay_link)

    def watch_relay(reporter: Reporter, name: str) -> None:
        reporter.watch(
            f"relay.{name}",
            f"relay {name}",
            name=name,
            nats=lambda: relay_link.trouble,
            failing=functools.partial(relay_stopped, name),
            position=functools.partial(relay_position, name),
            backlog=functools.partial(relay_backlog, name),
        )

    async def stand_by(
        name: str, context: BoundedContext[Any], stop: asyncio.Event, reporter: Reporter
    ) -> None:
        """The context's relay while this process holds its lock: standing by (reported
        as a standby) while another holds it, and again after losing it (a PostgreSQL
        session that ended, and another took the lock meanwhile)."""
        standby = f"relay.{name}.standby.{os.getpid()}"

        def waiting(holder: str) -> None:
            roles[name] = "standing by"
            reporter.watch(
                standby, f"relay {name} standby", name=name, nats=lambda: None,
                position=lambda: 0, backlog=lambda: 0, standby=True,
            )  # fmt: skip
            tell(f"standing by: a relay of {name} runs ({holder}); taking over when it stops")

        failed = Backoff(1.0, 30.0)
        while not stop.is_set():
            try:
                lease = await hold(name, context, stop, reporter, waiting)
            except Exception as exc:  # its lock's database refusing, say: try again
                roles.pop(name, None)
                relay_trouble[name] = f"relay {name} cannot take its lock: {exc}"
                log.error("%s; trying again in %.0fs", relay_trouble[name], failed.delay)
                await failed.wait(stop)
                continue
            if lease is None or not lease.lost.is_set():
                return
            relay_trouble.pop(name, None)  # a standby's is no trouble
            log.warning("relay %s lost its lock to %s: standing by", name,
                        lease.holder or "another relay")  # fmt: skip

    async def hold(
        name: str,
        context: BoundedContext[Any],
        stop: asyncio.Event,
        reporter: Reporter,
        waiting: Callable[[str], None],
    ) -> RelayLease | None:
        """Wait for the relay's lock, then relay until ``stop`` is set or the lock is lost;
        the lease (None: stopped while standing by)."""
        nats = await relay_link.connection() if context.log_file is None else None
        leasing = relay_lease(
            context, "toolkit serve", stop, standby=True, waiting=waiting, nats=nats,
            ttl=settings.lease_ttl, replicas=settings.stream_replicas,
        )  # fmt: skip
        async with leasing as lease:
            if lease is None:
                return None
            reporter.unwatch(f"relay.{name}.standby.{os.getpid()}")
            relay_trouble.pop(name, None)
            roles[name] = "relaying"
            watch_relay(reporter, name)
            if lease.waited:
                tell(f"took over: relaying {name} in this process")
            ends = asyncio.Event()  # stop, or the lock lost
            watching = [asyncio.create_task(e.wait()) for e in (stop, lease.lost)]
            for task in watching:
                task.add_done_callback(lambda _: ends.set())
            try:
                await run_relay(name, context, ends)
            finally:
                for task in watching:
                    task.cancel()
                reporter.unwatch(f"relay.{name}")
        return lease

    async def run_relay(name: str, context: BoundedContext[Any], stop: asyncio.Event) -> None:
        """The context's relay, started once NATS answers: the API serves reads while
        NATS is away, and readiness says why the relay is not running."""
        unreachable, stopped = Backoff(0.25, 5.0), Backoff(1.0, 30.0)
        while not stop.is_set():
            try:
                connection = await relay_link.connection()
            except HTTPException as exc:
                relay_trouble[name] = str(exc.detail)
                await unreachable.wait(stop)
                continue
            unreachable.reset()
            relay_trouble.pop(name, None)
            spec = StreamSpec.from_settings(name, settings)
            relays[name] = Relay(context, connection, stream=spec)
            try:
                await relays[name].run(stop)
                return
            except Exception as exc:
                # Something an operator must mend (a foreign message in the relay's form,
                # a stream written from another log, refused credentials): say so, and
                # look again now and then, so that the relay goes on once it is mended.
                if relays[name].stats.published:  # it was mended, and broke again
                    stopped.reset()
                relay_trouble[name] = f"relay {name} stopped: {exc}"
                log.error("relay %s stopped: %s; trying again in %.0fs", name, exc, stopped.delay)
            await stopped.wait(stop)

    def relay_stopped(name: str) -> str | None:
        """Why the context's relay is not running (one that runs again has mended it)."""
        running = name in relays and relays[name].running
        return None if running else relay_trouble.get(name)

    def relay_position(name: str) -> int:
        return relays[name].stats.position if name in relays else 0

    def relay_backlog(name: str) -> int:
        return relays[name].lag() if name in relays else 0

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        reporter = Reporter(settings.data_dir)  # what status and readiness read about them
        tasks = [
            asyncio.create_task(
                stand_by(name, context, stop, reporter)
                if standby_relay
                else run_relay(name, context, stop)
            )
            for name, context in (contexts.items() if relay else ())
        ]
        if policies:
            tasks.append(asyncio.create_task(reactors.run(stop)))
        for name in contexts if relay and not standby_relay else ():
            watch_relay(reporter, name)
        reactors.watch(reporter)
        reporter.start()
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await reporter.close()
            reactors.close()
            await relay_link.close()
            await nats.close()
            for context in contexts.values():
                context.close()
            for home in homes:
                home.close()

    app = FastAPI(
        title=title_of(system, settings.system),
        version="1",
        lifespan=lifespan,
        docs_url=None,  # docs.install serves them from installed assets, not a CDN
        redoc_url=None,
    )
    docs.install(app)
    app.state.nats = nats  # reads that carry a consistency token use it
    app.state.consistency_wait = settings.consistency_wait
    problems.install(app)
    app.add_middleware(conditional.middleware)  # the innermost: it sees endpoints' answers
    app.state.satisfiable = Satisfiable(
        reads={h.name: _streams_read(system, h.name) for h in homes},
        projections=frozenset(system.projections),
        heads={name: functools.partial(_log_head, c) for name, c in contexts.items()},
    )
    metrics = Metrics()
    if settings.api_tokens:
        app.add_middleware(BearerAuth(settings.api_tokens).middleware)
    app.add_middleware(http_tracing.middleware)  # each command request's trace
    app.add_middleware(BodyLimit(settings.max_body).middleware)  # before auth reads
    app.add_middleware(metrics.middleware)  # the outermost: it times refusals too
    for home in homes:
        _include(app, system.routers[home.name](home))
    for name, command_factory in system.commands.items():
        _include(app, command_factory(contexts[name]))
    _include(app, feed.router(system.contexts, nats))
    _include(app, asyncapi_router(system, settings))
    _include(app, webhooks.router(system.contexts, settings.data_dir, nats))
    _include(app, contracts_router(system))

    async def report() -> dict[str, Any]:
        from toolkit.ops.status import collect  # status reads systems: imported when used

        return await collect(system, settings, await nats.client())

    async def nats_ok() -> str | None:
        try:
            await (await nats.client()).flush(timeout=2)
        except Exception as exc:  # any failure means not ready
            why = exc.detail if isinstance(exc, HTTPException) else str(exc)  # no "503: "
            return f"NATS does not answer: {nats.trouble or why or type(exc).__name__}"
        return None

    async def models_ok() -> str | None:
        """Reads answer 503 until their projection has a read model: readiness too."""
        reasons = await asyncio.gather(*(asyncio.to_thread(_has_model, h) for h in homes))
        return "; ".join(r for r in reasons if r) or None

    def relays_ok() -> str | None:
        reasons = [reason for name in relay_trouble if (reason := relay_stopped(name))]
        reasons += reactors.trouble.values()  # the policies run here
        connection = relay_link.trouble  # the relays would sit on it, making no progress
        if connection is not None and ((relay and contexts) or policies):
            reasons.append(f"the relays' NATS connection: {connection}")
        return "; ".join(reasons) or None

    _include(
        app,
        health.router(
            metrics,
            report,
            nats_ok=nats_ok,
            relays_ok=relays_ok,
            models_ok=models_ok,
            max_lag=settings.ready_max_lag,
            relays=(lambda: dict(sorted(roles.items()))) if relay and standby_relay else None,
        ),
    )
    return app


def _include(app: FastAPI, router: APIRouter) -> None:
    """``router``'s routes as the app's own. FastAPI's ``include_router`` keeps a router
    nested, and every request then walks the nesting, route by route, setting and
    restoring its own keys in the request's scope at each: some 40 µs a request on this
    API. A router's routes carry its prefix, tags and responses already; one that brings
    what only an inclusion applies (a lifespan, startup or shutdown handlers, dependencies)
    is included as FastAPI does. Routers it includes stay as they are (their inclusion
    already names this router's prefix)."""
    plain = _plain_lifespan(router.lifespan_context)
    if not plain or router.on_startup or router.on_shutdown or router.dependencies:
        app.include_router(router)
        return
    app.router.routes.extend(router.routes)
    app.router._mark_routes_changed()  # (FastAPI's caches of the routes: built again)


def _plain_lifespan(lifespan: object) -> bool:
    """Whether a router's lifespan does nothing: FastAPI's default, or (a router that
    includes others) FastAPI's merge of such lifespans. Anything else, or a merge that
    does not look as expected, is not plain (the router is then included as FastAPI does)."""
    if type(lifespan).__name__ == "_DefaultLifespan":
        return True
    merged = getattr(lifespan, "__wrapped__", None)  # (asynccontextmanager's function)
    cells = getattr(merged, "__closure__", None)
    if getattr(merged, "__name__", None) != "merged_lifespan" or not cells or len(cells) != 2:
        return False
    return all(_plain_lifespan(cell.cell_contents) for cell in cells)
