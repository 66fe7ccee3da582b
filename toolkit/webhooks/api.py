"""The webhooks' HTTP API: each context's subscriptions and dead letters.

- ``POST`` and ``GET /webhooks/<context>/subscriptions``, ``GET`` and ``DELETE
  …/subscriptions/<id>``: a subscriber registers a callback URL for one event type, with a
  secret (never returned nor logged); it receives the events published after its position
  (by default the stream's head when it was made);
- ``GET /webhooks/<context>/dead-letters`` and ``POST …/<subscription>/<event>/retry``:
  deliveries that kept failing, and putting one back in the queue.

Without a key to seal the subscribers' secrets with (``TOOLKIT_WEBHOOK_KEYS``, see
:mod:`toolkit.webhooks.keys`) every route here answers 503 with a problem document saying
how to make one; the rest of the API does not need it. A callback URL holding credentials
(``user:password@``) is refused (422), and one stored before is shown without them.

Each context's store is opened once, on its first request (its schema created or
converted then, one request at a time), and kept until the app stops. SQLite runs in a
worker thread, never on the event loop: a store busy with the dispatcher's transaction
waits there, not in front of every other request.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

import anyio.to_thread
import nats.errors
from fastapi import APIRouter, Body, Depends, HTTPException, Request, Response
from nats.js.errors import NotFoundError
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from toolkit.errors import ConfigurationError
from toolkit.http.feed import PROBLEM_RESPONSES, NatsLink, unavailable
from toolkit.redaction import redact_urls
from toolkit.webhooks import destinations
from toolkit.webhooks.keys import WebhookKeys
from toolkit.webhooks.signing import secret_key
from toolkit.webhooks.store import DeadLetter, DuplicateSubscription, Subscription, WebhookStore
from toolkit.wire.contracts import contract_of
from toolkit.write.context import BoundedContext

T = TypeVar("T")


class NewSubscription(BaseModel):
    """A callback URL to POST one event type of the context to."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        max_length=2048, description="an http or https URL that answers 2xx to a delivery"
    )
    event_type: str = Field(description="a contract the context publishes: `sales.OrderPlaced`")
    secret: SecretStr = Field(
        description="`whsec_` and the base64 of 24 to 64 random bytes: the HMAC-SHA256 key "
        "of the `webhook-signature` header (Standard Webhooks). Never shown again."
    )
    after: int | None = Field(
        None,
        ge=0,
        le=2**63 - 1,  # a stream position is 64-bit: a larger one is 422, not the store's 500
        description="deliver events after this stream position (default: now)",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        destinations.parse(url)  # (Refused is a ValueError: a 422 naming why)
        return url

    @field_validator("url")
    @classmethod
    def _no_credentials(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.username is not None or parts.password is not None:
            raise ValueError(  # the message never repeats them
                "the callback URL must not hold credentials (user:password@): the "
                "signature (webhook-signature) is what proves a delivery"
            )
        return url

    @field_validator("secret")
    @classmethod
    def _secret(cls, secret: SecretStr) -> SecretStr:
        secret_key(secret.get_secret_value())
        return secret


class _Stores:
    """The API's store of each context: opened on first use, one caller at a time each
    (a store is one SQLite connection), closed with the app."""

    def __init__(self, data_dir: Path, contexts: list[str], keys: WebhookKeys | None) -> None:
        self.data_dir = data_dir
        self.keys = keys
        """None: no key, no store is opened (the routes answer 503 before)."""
        self._locks = {context: threading.Lock() for context in contexts}
        self._open: dict[str, WebhookStore] = {}

    def known(self, context: str) -> str:
        """``context``, or a 404 that lists the known ones."""
        if context not in self._locks:
            known = ", ".join(sorted(self._locks)) or "none"
            raise HTTPException(404, f"no context {context!r} (known: {known})")
        return context

    async def run(self, context: str, call: Callable[[WebhookStore], T]) -> T:
        """``call`` with the context's store, in a worker thread."""
        lock = self._locks[self.known(context)]
        return await anyio.to_thread.run_sync(self._call, lock, context, call)

    def _call(self, lock: threading.Lock, context: str, call: Callable[[WebhookStore], T]) -> T:
        with lock:
            store = self._open.get(context)
            if store is None:  # a store that cannot be opened is tried again next time
                if self.keys is None:
                    raise HTTPException(503, "webhook subscriptions are off: no key")
                try:
                    store = WebhookStore.of(self.data_dir, context, self.keys)
                except ConfigurationError as exc:  # a newer schema, a key dropped too soon
                    raise HTTPException(503, str(exc)) from None
                self._open[context] = store
            return call(store)

    def close(self) -> None:
        for context, lock in self._locks.items():
            with lock:
                store = self._open.pop(context, None)
                if store is not None:
                    store.close()


def router(
    contexts: Mapping[str, type[BoundedContext[Any]]], data_dir: Path, link: NatsLink
) -> APIRouter:
    """Subscriptions and dead letters of each context's webhooks."""
    event_types = {
        name: sorted(contract_of(c)[0] for c in cls.published_language.contracts)
        for name, cls in contexts.items()
    }
    try:
        keys: WebhookKeys | None = WebhookKeys.of(link.settings.webhook_keys)
        off = ""
    except ConfigurationError as exc:
        keys, off = None, f"webhook subscriptions are off: {exc}"
    stores = _Stores(Path(data_dir), list(event_types), keys)

    def sealing() -> None:
        """Without a key the secrets could be neither sealed nor opened: 503, saying why."""
        if off:
            raise HTTPException(503, off)

    allowed = destinations.Allowed.of(link.settings.webhook_allow)

    @asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[None]:
        try:
            async with link.lifespan(app):
                yield
        finally:
            await anyio.to_thread.run_sync(stores.close)

    api = APIRouter(
        prefix="/webhooks/{context}",
        tags=["webhooks"],
        lifespan=lifespan,
        dependencies=[Depends(sealing)],
        responses={
            503: PROBLEM_RESPONSES[503]
            | {"description": "NATS cannot be reached, or no TOOLKIT_WEBHOOK_KEYS"}
        },
    )

    async def head(context: str) -> int:
        client = await link.client()
        try:
            return int((await client.jetstream().stream_info(context)).state.last_seq)
        except NotFoundError:
            return 0
        except (nats.errors.Error, TimeoutError) as exc:
            raise unavailable(f"cannot read stream {context}: {type(exc).__name__}") from None

    @api.post(
        "/subscriptions", status_code=201, responses={409: {"description": "already subscribed"}}
    )
    async def subscribe(
        context: str,
        new: Annotated[NewSubscription, Body()],
        request: Request,
        response: Response,
    ) -> Subscription:
        """Register a callback URL for an event type of the context."""
        known = event_types[stores.known(context)]
        if new.event_type not in known:
            raise HTTPException(
                422,
                f"unknown event type {new.event_type!r} for {context} (known: {', '.join(known)})",
            )
        try:  # resolved and checked here, and again at each delivery
            await destinations.admit(new.url, allowed)
        except destinations.Refused as exc:
            raise HTTPException(422, f"callback URL refused: {exc}") from None
        after = new.after if new.after is not None else await head(context)
        secret = new.secret.get_secret_value()
        try:
            row = await stores.run(
                context, lambda store: store.subscribe(new.event_type, new.url, secret, after)
            )
        except DuplicateSubscription as dup:
            raise HTTPException(
                409,
                f"{redact_urls(new.url)} already receives {new.event_type} as subscription "
                f"{dup.existing}",
            ) from None
        response.headers["Location"] = f"{request.url.path}/{row.id}"
        return row

    @api.get("/subscriptions")
    async def list_subscriptions(context: str) -> list[Subscription]:
        return await stores.run(context, lambda store: store.subscriptions())

    @api.get("/subscriptions/{subscription_id}", responses={404: PROBLEM_RESPONSES[404]})
    async def get_subscription(context: str, subscription_id: str) -> Subscription:
        rows = await stores.run(context, lambda store: store.subscriptions(subscription_id))
        if not rows:
            raise HTTPException(404, f"no subscription {subscription_id} for {context}")
        return rows[0]

    @api.delete("/subscriptions/{subscription_id}", status_code=204, response_model=None)
    async def unsubscribe(context: str, subscription_id: str) -> Response:
        """Stop deliveries to this subscription; pending and parked ones are dropped."""
        if not await stores.run(context, lambda store: store.unsubscribe(subscription_id)):
            raise HTTPException(404, f"no subscription {subscription_id} for {context}")
        return Response(status_code=204)

    @api.get("/dead-letters")
    async def dead_letters(context: str) -> list[DeadLetter]:
        """Deliveries that kept failing, with the reason of the last attempt."""
        return await stores.run(context, lambda store: store.dead_letters())

    @api.post(
        "/dead-letters/{subscription_id}/{event_id}/retry", status_code=202, response_model=None
    )
    async def retry(context: str, subscription_id: str, event_id: str) -> Response:
        """Put a parked delivery back in the queue, with a fresh count of attempts."""
        queued = await stores.run(context, lambda store: store.retry(subscription_id, event_id))
        if not queued:
            raise HTTPException(404, f"no dead letter of {subscription_id} for {event_id}")
        return Response(status_code=202)

    return api
