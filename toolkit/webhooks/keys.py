"""The keys that encrypt the subscribers' secrets at rest: ``TOOLKIT_WEBHOOK_KEYS``.

A webhook secret is what a receiver trusts a delivery by; a copy of the store file (a
backup, a support bundle) must not hand it out. So the store keeps each secret sealed
with Fernet (AES-128-CBC and HMAC-SHA256, from the ``cryptography`` package), under keys
that live in the environment only, never beside the store.

``TOOLKIT_WEBHOOK_KEYS`` holds Fernet keys, comma-separated: the first seals, every one
opens (``MultiFernet``). That is the rotation: put a new key first and keep the old one
after it; each store, when opened (by ``toolkit serve``'s first webhook request, or by
``toolkit webhooks <context>`` at start), seals again under the first key every secret an
older key sealed; once both have run with the new list, drop the old key. Make a key with
``toolkit webhooks-key``.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from toolkit.config import webhook_keys_in
from toolkit.errors import ConfigurationError

VARIABLE = "TOOLKIT_WEBHOOK_KEYS"
HOW_TO_MAKE = (
    f"set {VARIABLE} to a key made with 'toolkit webhooks-key' (or python -c "
    '"from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())")'
)


class MissingWebhookKey(ConfigurationError):
    """No key: webhook secrets cannot be sealed nor opened."""

    def __init__(self) -> None:
        super().__init__(f"webhook secrets are encrypted at rest: {HOW_TO_MAKE}")


class UnreadableSecret(ConfigurationError):
    """A secret no key of ``TOOLKIT_WEBHOOK_KEYS`` opens: the key that sealed it is gone."""


def new_key() -> str:
    """A fresh Fernet key, for ``TOOLKIT_WEBHOOK_KEYS``."""
    return Fernet.generate_key().decode()


class WebhookKeys:
    """Seals and opens subscribers' secrets: the first key seals, every one opens."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise MissingWebhookKey
        fernets = []
        for number, key in enumerate(keys, 1):
            try:
                fernets.append(Fernet(key))
            except (ValueError, TypeError):  # the message never repeats the key
                raise ConfigurationError(
                    f"{VARIABLE}: key {number} is not a Fernet key (32 url-safe base64 "
                    f"bytes); {HOW_TO_MAKE}"
                ) from None
        self._first = fernets[0]
        self._all = MultiFernet(fernets)

    @classmethod
    def of(cls, keys: WebhookKeys | Sequence[str] | None = None) -> WebhookKeys:
        """``keys`` as they are, from a list, or (None) from the environment."""
        if isinstance(keys, WebhookKeys):
            return keys
        return cls(webhook_keys_in() if keys is None else keys)

    def __repr__(self) -> str:
        return "WebhookKeys(<hidden>)"

    def seal(self, secret: str) -> str:
        return self._all.encrypt(secret.encode()).decode()

    def open(self, sealed: str, whose: str = "a subscription") -> str:
        try:
            return self._all.decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise UnreadableSecret(
                f"the secret of {whose} was sealed by a key {VARIABLE} no longer holds "
                "(dropped before every store was opened with the new one?): put it back"
            ) from None

    def sealed_by_first(self, sealed: str) -> bool:
        """Whether the first key sealed it (else :meth:`reseal` is due)."""
        try:
            self._first.decrypt(sealed.encode())
        except InvalidToken:
            return False
        return True

    def reseal(self, sealed: str, whose: str = "a subscription") -> str:
        """The secret sealed again under the first key."""
        self.open(sealed, whose)  # names the subscription when no key opens it
        return self._all.rotate(sealed.encode()).decode()


def unavailable(keys: Sequence[str]) -> str | None:
    """Why webhook subscriptions are off with these keys, or None when they are on."""
    try:
        WebhookKeys(keys)
    except ConfigurationError as exc:
        return str(exc)
    return None
