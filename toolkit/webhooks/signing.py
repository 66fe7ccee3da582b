"""Standard Webhooks signatures: what the dispatcher puts on a delivery and a receiver checks.

- ``webhook-id``: the event's id, the same on every retry;
- ``webhook-timestamp``: Unix seconds of this attempt;
- ``webhook-signature``: ``v1,`` and the base64 HMAC-SHA256, keyed by the subscriber's
  secret, of ``<webhook-id>.<webhook-timestamp>.<body>``.

A receiver written in Python can use :func:`verify`; any Standard Webhooks library
checks the same signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The HMAC key of a secret ``whsec_<base64>`` (the prefix is optional): 24 to 64
    random bytes, as Standard Webhooks asks. The error never repeats the secret."""
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the secret must be 'whsec_' and base64 (Standard Webhooks)") from None
    if not 24 <= len(key) <= 64:
        raise ValueError(f"the secret must hold 24 to 64 bytes once decoded, not {len(key)}")
    return key


def new_secret() -> str:
    """A fresh secret in the Standard Webhooks format."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for a delivery."""
    signed = b"%s.%d.%s" % (msg_id.encode(), timestamp, body)
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: float = 300.0,
    now: float | None = None,
) -> bool:
    """What a receiver does: check a delivery's signature, and that its timestamp is
    within ``tolerance`` seconds of now (so a captured request cannot be replayed later).
    ``headers`` must look names up case-insensitively (as Starlette's and httpx's do)."""
    try:
        msg_id = headers["webhook-id"]
        timestamp = int(headers["webhook-timestamp"])
        signatures = headers["webhook-signature"].split()
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, msg_id, timestamp, body)
    return any(hmac.compare_digest(expected, s) for s in signatures)
