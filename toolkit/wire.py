"""The wire format: what a context puts on its stream, readable by any NATS client.

A message on a context's stream is one integration event:

- subject ``<context>.<aggregate-type>.<aggregate-id>.<event-name>``, each token encoded
  by :func:`encode_token` so that no id can change what a subject matches;
- body: the event's JSON (UTF-8);
- headers: CloudEvents 1.0 attributes in the NATS protocol binding's binary mode
  (``ce-*``), plus ``Nats-Msg-Id`` so JetStream drops duplicates.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from toolkit.errors import SubjectError

MSG_ID = "Nats-Msg-Id"
EXPECTED_LAST_SEQUENCE = "Nats-Expected-Last-Sequence"
CONTENT_TYPE = "content-type"
CE_SPECVERSION = "ce-specversion"
CE_ID = "ce-id"
CE_SOURCE = "ce-source"
CE_TYPE = "ce-type"
CE_SUBJECT = "ce-subject"
CE_TIME = "ce-time"
CE_SCHEMAVERSION = "ce-schemaversion"
CE_AGGREGATETYPE = "ce-aggregatetype"
CE_AGGREGATEVERSION = "ce-aggregateversion"
CE_LOGPOSITION = "ce-logposition"
CE_CORRELATIONID = "ce-correlationid"
CE_CAUSATIONID = "ce-causationid"

SPECVERSION = "1.0"
JSON = "application/json"

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_SAFE_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


def check_name(kind: str, name: str) -> str:
    """Validate a name that becomes a subject token or a stream name (context, aggregate,
    event): a letter, then letters, digits, ``_`` or ``-``, at most 64 characters."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SubjectError(
            f"invalid {kind} name {name!r}: use a letter, then letters, digits, '_' or '-' "
            "(at most 64 characters)"
        )
    return name


def encode_token(value: str) -> str:
    """Encode an aggregate id as one subject token that matches only itself.

    Letters, digits, ``_`` and ``-`` stay as they are (UUIDs are unchanged); every other
    character is percent-encoded from its UTF-8 bytes, ``.`` included. The encoding is
    reversible (:func:`decode_token`) and the same in any language.
    """
    if not value:
        raise SubjectError("an aggregate id used in a subject must not be empty")
    if _SAFE_TOKEN.fullmatch(value):
        return value
    return quote(value, safe="").replace(".", "%2E").replace("~", "%7E")


def decode_token(token: str) -> str:
    return unquote(token)


def subject(context: str, aggregate_type: str, aggregate_id: str, event_name: str) -> str:
    return f"{context}.{aggregate_type}.{encode_token(aggregate_id)}.{event_name}"


def message_id(context: str, log_position: int) -> str:
    """The de-duplication id of the event at a log position: stable across relay restarts."""
    return f"{context}:{log_position}"
