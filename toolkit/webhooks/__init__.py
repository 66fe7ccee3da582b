"""Webhooks: a context's integration events POSTed to subscribers' callback URLs.

A subscriber registers a callback URL for one event type of a context, with a secret
(``POST /webhooks/<context>/subscriptions``). Subscriptions live in a small SQLite file
in the data folder, ``<data dir>/webhooks/<context>.sqlite`` (readable by its owner only:
it holds the secrets). A subscription receives the events published after its position
(by default the stream's head when it was made).

The dispatcher (``toolkit webhooks <context>``) is a consumer with its own queue: a
durable JetStream consumer (a :class:`~toolkit.read.workqueue.WorkQueue`) fans each event out
into one delivery record per matching subscription, in one SQLite transaction, and only
then acknowledges it; the delivery records are the queue its senders work from. Each
delivery is POSTed as the event's CloudEvents envelope, byte for byte as on the stream
(``Content-Type: application/cloudevents+json``), signed the Standard Webhooks way:

- ``webhook-id``: the event's id (``<context>:<log position>``), the same on every retry
  and wherever the event sits on the stream, so a receiver can drop a delivery it has
  already processed;
- ``webhook-timestamp``: Unix seconds of this attempt;
- ``webhook-signature``: ``v1,`` and the base64 HMAC-SHA256, keyed by the subscriber's
  secret, of ``<webhook-id>.<webhook-timestamp>.<body>`` (:func:`verify` checks one).

A 2xx answer marks the delivery done, and a done delivery is never sent again, whatever
restarts: the records outlive the process and the fan-out ignores what it already has.
Records are keyed by the event's id, not by its stream sequence: when the stream lost
messages and the relay published them again at new sequences (or the stream was created
again and refilled), an event already recorded is known at its new sequence, and a
sequence that now holds another event takes nothing for done. Only the relay's own
messages are fanned out (:func:`toolkit.wire.relay_position`): another publisher's
message names no event of the log, and could carry a real event's id; it is skipped with
a warning. Only a crash between a receiver's 2xx and that record can send one twice,
with the same ``webhook-id``. Anything else (another status, a redirect, a timeout, a refused
connection) is retried with exponential back-off (doubling from ``backoff`` up to
``max_backoff``, with a little jitter, or after ``Retry-After`` when the receiver says),
and after ``max_attempts`` the delivery is parked as a dead letter with the reason,
listed at ``GET /webhooks/<context>/dead-letters`` and retried on request. One failing
subscriber delays nobody else. Deliveries are not ordered: a receiver orders by
``logposition``. Secrets are never logged nor returned by the API.

The package, one module a concept (see the README's layout section):

- :mod:`~toolkit.webhooks.signing`: Standard Webhooks signatures (:func:`sign`,
  :func:`verify`, :func:`new_secret`);
- :mod:`~toolkit.webhooks.store`: the SQLite store of subscriptions and deliveries;
- :mod:`~toolkit.webhooks.dispatcher`: the consumer that fans events out and POSTs them;
- :mod:`~toolkit.webhooks.api`: the FastAPI router (the only module here that imports
  FastAPI or pydantic).

The API's names are imported on first use (PEP 562), so that ``toolkit webhooks
<context>``, which imports :func:`dispatch` from here, never imports FastAPI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from toolkit.webhooks.dispatcher import MEDIA_TYPE, QUEUE, Dispatcher, DispatchStats, dispatch
from toolkit.webhooks.signing import SECRET_PREFIX, new_secret, secret_key, sign, verify
from toolkit.webhooks.store import (
    SCHEMA_VERSION,
    DeadLetter,
    Due,
    DuplicateSubscription,
    Subscription,
    WebhookStore,
)

if TYPE_CHECKING:
    from toolkit.webhooks.api import NewSubscription, router


def __getattr__(name: str) -> Any:
    """``router`` and ``NewSubscription``, from :mod:`toolkit.webhooks.api` once asked for."""
    if name not in ("NewSubscription", "router"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from toolkit.webhooks import api

    return getattr(api, name)


__all__ = [
    "MEDIA_TYPE",
    "QUEUE",
    "SCHEMA_VERSION",
    "SECRET_PREFIX",
    "DeadLetter",
    "DispatchStats",
    "Dispatcher",
    "Due",
    "DuplicateSubscription",
    "NewSubscription",
    "Subscription",
    "WebhookStore",
    "dispatch",
    "new_secret",
    "router",
    "secret_key",
    "sign",
    "verify",
]
