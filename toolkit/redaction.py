"""Redaction: credentials taken out of URLs in anything the toolkit prints or logs.

A kernel module (it imports nothing from the toolkit), so that settings' ``repr``, the
CLI, ``status`` and the log handlers all use the one rule.
"""

from __future__ import annotations

import logging
import re

__all__ = ["RedactingFilter", "redact_urls"]

_URL_CREDENTIALS = re.compile(r"([a-z][a-z0-9+.-]*://)[^/\s]*@", re.IGNORECASE)
"""A scheme, then everything up to the last ``@`` before the path: a password may hold
``@`` itself. (In ``nats://a@h1,b@h2`` it hides ``h1`` too: too much rather than a leak.)"""


def redact_urls(text: str) -> str:
    """``text`` with the credentials of any URL in it removed: the one redaction of what
    the toolkit prints or logs (start lines, errors, status, log records, settings)."""
    return _URL_CREDENTIALS.sub(r"\1", text)


class RedactingFilter(logging.Filter):
    """A logging filter for handlers: each record's message (and traceback) with the
    credentials of URLs removed, whichever library logged it (nats-py's errors, uvicorn's,
    psycopg's name the server they failed to reach)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_urls(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_urls(record.exc_text)
        return True
