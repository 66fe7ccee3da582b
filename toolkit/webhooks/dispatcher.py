"""The webhook dispatcher (``toolkit webhooks <context>``): a consumer with its own queue.

A durable JetStream consumer (a :class:`~toolkit.read.workqueue.WorkQueue` named
``webhooks``) fans each event out into one delivery record per matching subscription, in
one SQLite transaction (:meth:`~toolkit.webhooks.store.WebhookStore.fan_out`), and only
then acknowledges it; the delivery records are the queue its senders work from. Only the
relay's own messages are fanned out (:func:`toolkit.wire.relayed_head`): another
publisher's message names no event of the log, and could carry a real event's id; it is
skipped with a warning.

Each delivery is POSTed as the event's CloudEvents envelope, byte for byte as on the
stream, signed (:mod:`toolkit.webhooks.signing`). A 2xx answer marks it done; anything else
(another status, a redirect, a timeout, a refused connection) is retried after a delay that
doubles from ``backoff`` up to ``max_backoff``, with a little jitter, or after
``Retry-After`` when the receiver says; after ``max_attempts`` the delivery is parked as a
dead letter. One failing subscriber delays nobody else.

Any number of dispatchers of a context may run on one data folder, on its host (the store
is a SQLite file; across hosts it would have to live in a shared database, such as
PostgreSQL, which the webhooks do not support yet). They compete on the ``webhooks``
consumer (an event one of them fanned out but did not acknowledge, because it died, is
fanned out again by another after the consumer's ``ack_wait``: nothing is recorded twice)
and claim deliveries from the store for ``lease`` seconds, renewed while the attempt runs:
the deliveries a dead dispatcher claimed are attempted by another once their claims lapse.
Only those can reach a receiver twice (the dead one's attempt may have got there), with
the same ``webhook-id``.

No FastAPI here: the CLI command imports this module alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import nats.errors
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from toolkit import wire
from toolkit.backoff import delay_after, pause
from toolkit.config import Settings
from toolkit.errors import ConfigurationError
from toolkit.nats.connection import Connection, open_nats
from toolkit.read.reader import StreamMessage
from toolkit.read.workqueue import WorkQueue
from toolkit.redaction import redact_urls
from toolkit.webhooks.destinations import Allowed, Refused, check, pinned_request
from toolkit.webhooks.keys import WebhookKeys
from toolkit.webhooks.signing import sign
from toolkit.webhooks.store import Due, WebhookStore

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/cloudevents+json"
QUEUE = "webhooks"
"""The name of the dispatcher's durable consumer on the context's stream."""


def _where(url: str) -> str:
    """A callback URL fit for logs: no credentials, query or fragment."""
    try:
        parts = urlsplit(url)  # (not .port: it raises for a port out of range)
    except ValueError:
        return "<an invalid URL>"
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


@dataclass
class DispatchStats:
    read: int = 0
    """Events taken from the dispatcher's queue."""
    fanned_out: int = 0
    """Deliveries recorded from them."""
    untrusted: int = 0
    """Messages the context's relay did not publish (another client's, or malformed):
    nothing delivered."""
    delivered: int = 0
    retried: int = 0
    parked: int = 0


class Dispatcher:
    """Delivers a context's events to its webhook subscribers, beside any others of the
    context on the same data folder."""

    def __init__(
        self,
        client: Client | Connection,
        context: str,
        data_dir: Path,
        *,
        max_attempts: int = 8,
        backoff: float = 1.0,
        max_backoff: float = 600.0,
        timeout: float = 10.0,
        concurrency: int = 16,
        poll: float = 1.0,
        lease: float = 6.0,
        allowed: Allowed | Iterable[str] = (),
        keys: WebhookKeys | Sequence[str] | None = None,
    ) -> None:
        if max_attempts < 1 or backoff <= 0 or concurrency < 1 or lease <= 0:
            raise ConfigurationError(
                "max_attempts and concurrency must be 1 or more, backoff and lease > 0"
            )
        self.connection = Connection.of(client)
        """The queue's: a client the server closed is replaced."""
        self.context = context
        self.data_dir = Path(data_dir)
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.concurrency = concurrency
        self.poll = poll
        """How often due deliveries are looked for when nothing wakes the dispatcher
        (a dead letter retried through the API, or an event another dispatcher fanned
        out, is noticed within this)."""
        self.lease = lease
        """Seconds a claimed delivery is this dispatcher's (renewed every third of it while
        its attempt runs): how long the deliveries of a dispatcher that died wait."""
        self.allowed = allowed if isinstance(allowed, Allowed) else Allowed.of(allowed)
        """Hosts and networks the operator opened beyond global addresses."""
        self.keys = WebhookKeys.of(keys)
        """What opens the subscribers' secrets (None: ``TOOLKIT_WEBHOOK_KEYS``); none: refused."""
        self.stats = DispatchStats()
        self.queue = WorkQueue(  # (it sees others' messages: _fan_out counts and names them)
            self.connection, context, QUEUE, ack_wait=30.0, max_deliver=10, relayed_only=False
        )
        self._wake = asyncio.Event()
        self._claims: dict[tuple[str, str], Due] = {}
        """The deliveries this dispatcher is attempting, as last claimed or renewed."""

    async def run(self, stop: asyncio.Event) -> DispatchStats:
        """Fan events out and deliver them until ``stop`` is set; attempts under way are
        finished (each within ``timeout``) before it returns. No lock: others may run."""
        with WebhookStore.of(self.data_dir, self.context, self.keys) as store:
            done = asyncio.Event()  # the claims are renewed until the last attempt ends
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._follow(store, stop))
                tasks.create_task(self._deliver(store, stop, done))
                tasks.create_task(self._renew(store, done))
                tasks.create_task(self._wake_on(stop))
        return self.stats

    async def _renew(self, store: WebhookStore, done: asyncio.Event) -> None:
        """Keep the claims of the attempts under way until they are recorded. A claim not
        renewed (the process held up past its lease, another dispatcher took it) stays
        as it was: its failure is then not recorded (see :meth:`WebhookStore.record`)."""
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), self.lease / 3)
            held = list(self._claims.values())
            if not held or done.is_set():
                continue
            try:
                renewed = store.renew(held, self.lease)
            except sqlite3.OperationalError as exc:
                log.warning("webhooks %s: renewing claims failed (%s)", self.context, exc)
                continue
            for due in renewed:
                if due.key in self._claims:  # (not recorded meanwhile)
                    self._claims[due.key] = due
            if len(renewed) < len(held):
                log.warning(
                    "webhooks %s: %d claims lapsed before they were renewed (another "
                    "dispatcher may attempt them too)",
                    self.context, len(held) - len(renewed),
                )  # fmt: skip

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    async def _follow(self, store: WebhookStore, stop: asyncio.Event) -> None:
        """Fan the stream out into deliveries, through the dispatcher's own queue; a
        missing stream is waited for, a lost server reconnected to."""
        while not stop.is_set():
            try:
                await self.queue.ensure()
                await self.queue.work(lambda m: self._fan_out(store, m), stop, batch=100)
            except NotFoundError:
                log.warning("stream %s does not exist yet; waiting for its context", self.context)
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning(
                    "webhooks %s: reading the queue failed (%s); again in a second",
                    self.context, type(exc).__name__,
                )  # fmt: skip
            await pause(stop, 1.0)

    async def _fan_out(self, store: WebhookStore, message: StreamMessage) -> None:
        self.stats.read += 1
        head = wire.relayed_head(self.context, message.headers.get(wire.MSG_ID), message.data)
        if isinstance(head, str):
            self.stats.untrusted += 1
            log.warning(
                "webhooks %s: sequence %d was not published by the %s relay, nothing to "
                "deliver: %s",
                self.context, message.sequence, self.context, head,
            )  # fmt: skip
            return
        assert head.id is not None  # relayed_head checked it
        created = store.fan_out(head.id, message.sequence, head.type, message.data)
        if created:
            self.stats.fanned_out += created
            self._wake.set()

    async def _deliver(self, store: WebhookStore, stop: asyncio.Event, done: asyncio.Event) -> None:
        try:
            await self._claim_and_send(store, stop)
        finally:
            done.set()

    async def _claim_and_send(self, store: WebhookStore, stop: asyncio.Event) -> None:
        running: set[asyncio.Task[None]] = set()
        # Redirects are not followed (a 3xx is a failed attempt: following it would go
        # unchecked). No proxy from the environment: the connection goes to the address
        # checked. No kept-alive connections: the pool is keyed by address, so a TLS
        # connection verified for one host name could carry another's delivery.
        async with httpx.AsyncClient(
            timeout=self.timeout,
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        ) as http:
            while not stop.is_set():
                self._wake.clear()
                free = self.concurrency - len(running)
                wait = self.poll  # when full, a finishing attempt wakes the loop
                try:
                    claimed = store.claim_due(free, self.lease) if free > 0 else []
                    full = len(running) + len(claimed) >= self.concurrency
                    next_due = None if full else store.next_due()
                except sqlite3.OperationalError as exc:  # busy past its timeout: again
                    log.warning("webhooks %s: claiming deliveries failed (%s)", self.context, exc)
                    claimed, next_due = [], None
                for due in claimed:
                    self._claims[due.key] = due
                    task = asyncio.create_task(self._attempt(http, store, due))
                    running.add(task)
                    task.add_done_callback(running.discard)
                    task.add_done_callback(lambda _: self._wake.set())
                if next_due is not None:
                    wait = min(wait, max(0.0, next_due - time.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
            if running:
                await asyncio.wait(running)

    async def _attempt(self, http: httpx.AsyncClient, store: WebhookStore, due: Due) -> None:
        try:
            await self._post(http, store, due)
        except Exception:  # the delivery stays claimed: it is tried again when that lapses
            log.exception(
                "webhooks %s: attempt of %s for subscription %s failed",
                self.context, due.event_id, due.subscription_id,
            )  # fmt: skip
        finally:
            self._claims.pop(due.key, None)

    async def _record(
        self,
        store: WebhookStore,
        due: Due,
        *,
        delivered: bool,
        reason: str = "",
        retry_at: float = 0,
    ) -> str | None:
        """Record an attempt under this dispatcher's latest claim of it. A write that
        stays busy past the store's timeout is tried again: not recording a 2xx would
        have the delivery sent again once its claim lapses."""
        for tries in range(1, 4):
            try:
                return store.record(
                    self._claims.get(due.key, due),
                    delivered=delivered,
                    reason=reason,
                    retry_at=retry_at,
                )
            except sqlite3.OperationalError:
                if tries == 3:
                    raise
                await asyncio.sleep(0.1 * tries)
        raise AssertionError("unreachable")

    async def _post(self, http: httpx.AsyncClient, store: WebhookStore, due: Due) -> None:
        timestamp = int(time.time())
        headers = {
            "content-type": MEDIA_TYPE,
            "user-agent": "toolkit-webhooks",
            "webhook-id": due.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(due.secret, due.event_id, timestamp, due.body),
        }
        reason, retry_after = await self._send(http, due, headers)
        if reason is None:
            await self._record(store, due, delivered=True)
            self.stats.delivered += 1
            log.info(
                "webhooks %s: delivered %s to %s (subscription %s, attempt %d)",
                self.context, due.event_id, _where(due.url), due.subscription_id,
                due.attempts + 1,
            )  # fmt: skip
            return
        attempts = due.attempts + 1
        if attempts >= self.max_attempts:
            if not await self._record(
                store, due, delivered=False, reason=f"gave up after {attempts} attempts: {reason}"
            ):
                return self._lapsed(due, reason)
            self.stats.parked += 1
            log.error(
                "webhooks %s: parked %s for %s (subscription %s) after %d attempts: %s",
                self.context, due.event_id, _where(due.url), due.subscription_id, attempts, reason,
            )  # fmt: skip
            return
        # jitter: receivers that recover are not stampeded
        delay = delay_after(attempts, self.backoff, self.max_backoff, jitter=0.25)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff))
        retry_at = time.time() + delay
        if not await self._record(store, due, delivered=False, reason=reason, retry_at=retry_at):
            return self._lapsed(due, reason)
        self.stats.retried += 1
        log.warning(
            "webhooks %s: %s to %s failed (attempt %d of %d, again in %.3gs): %s",
            self.context, due.event_id, _where(due.url), attempts, self.max_attempts, delay, reason,
        )  # fmt: skip

    def _lapsed(self, due: Due, reason: str) -> None:
        log.warning(
            "webhooks %s: %s to %s failed (%s), not counted: this dispatcher's claim on it "
            "lapsed (another dispatcher's attempt decides), or its subscription was removed",
            self.context, due.event_id, _where(due.url), reason,
        )  # fmt: skip

    async def _send(
        self, http: httpx.AsyncClient, due: Due, headers: dict[str, str]
    ) -> tuple[str | None, float | None]:
        """POST the delivery to the address its URL resolves to now, checked again (no
        DNS rebinding). Returns why it failed (None: a 2xx) and the receiver's
        ``Retry-After``. A URL no request can be made of fails like a refused connection:
        the attempt counts, and the delivery is parked in the end. The reason is short:
        the status, never the receiver's body (it would be read back by whoever
        registered the URL)."""
        try:
            address = await check(due.url, self.allowed, self.timeout)
            request = pinned_request(http, due.url, address, due.body, headers)
            response = await http.send(request, stream=True)
            await response.aclose()  # the body is not read
        except Refused as exc:
            return f"refused: {exc}", None
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {redact_urls(str(exc)) or 'no answer'}", None
        except Exception as exc:  # an invalid URL, a bad port, a host name httpx refuses
            log.debug("webhooks %s: cannot send", self.context, exc_info=True)
            return f"cannot send: {type(exc).__name__}: {redact_urls(str(exc))}", None
        if response.is_success:
            return None, None
        return f"HTTP {response.status_code}", _retry_after(response.headers.get("retry-after"))


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (seconds or an HTTP date)."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


async def dispatch(
    settings: Settings,
    context: str,
    stop: asyncio.Event,
    say: Callable[[str], object] = print,
) -> DispatchStats:
    """What ``toolkit webhooks <context>`` runs: the dispatcher until ``stop`` is set."""
    keys = WebhookKeys.of(settings.webhook_keys)  # none: one line, before NATS is asked
    async with open_nats(settings, name=f"webhooks-{context}") as link:
        dispatcher = Dispatcher(
            link.connection,
            context,
            settings.data_dir,
            allowed=settings.webhook_allow,
            keys=keys,
            lease=settings.lease_ttl,
        )
        say(f"delivering {context} events to webhook subscribers from {link.url}")
        stats = await dispatcher.run(stop)
    say(
        f"webhooks {context}: {stats.delivered} delivered, {stats.retried} retried, "
        f"{stats.parked} parked"
    )
    return stats
