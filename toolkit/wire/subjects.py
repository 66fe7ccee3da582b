"""Subjects: ``<context>.<aggregate-type>.<aggregate-id>.<event-name>``, each token
checked or percent-encoded so that no id can add a token or a wildcard."""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from toolkit.errors import SubjectError

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


MAX_ID_TOKEN = 1024
"""The most characters an aggregate id may take once encoded (:func:`encode_token`):
1024 letters and digits, 341 other ASCII characters, 170 accented letters, 113 CJK
characters, 85 emoji. Saves refuse longer ids (:func:`toolkit.write.context.check_id`).

Why 1024: nats-server closes a connection whose control line is longer than its
``max_control_line``, 4096 bytes by default, with ``-ERR 'Maximum Control Line
Exceeded'`` (nats-py then does not reconnect). The line's length counted is everything
after the verb: subject, reply subject and sizes. With every name at its 64-character
maximum, the relay's subject is 195 characters plus the id's token, and its line adds a
reply inbox (about 50) and two sizes: about 1,290 at this limit. Other lines carry the
token too: the JetStream log's direct gets put ``$JS.API.DIRECT.GET.`` and its stream
name (up to 200) twice in front of it (about 1,500 with the reply), and creating a
consumer filtered on one aggregate puts the stream's and the consumer's names in front of
its filter (about 1,400). Every line stays under about 1,500 bytes, well inside the
default: room for clients in other languages, whose own limits are no larger, and for
servers configured somewhat lower. A server whose ``max_control_line`` is below about
1,500 needs shorter ids."""


def encode_token(value: str) -> str:
    """Encode an aggregate id as one subject token that matches only itself.

    Letters, digits, ``_`` and ``-`` stay as they are (UUIDs are unchanged); every other
    character is percent-encoded from its UTF-8 bytes, ``.`` included. The encoding is
    reversible (:func:`decode_token`) and the same in any language. An empty id, one that
    is not UTF-8 (a lone surrogate) or one whose token would be longer than
    :data:`MAX_ID_TOKEN` raises :class:`SubjectError`.
    """
    if not value:
        raise SubjectError("an aggregate id used in a subject must not be empty")
    if _SAFE_TOKEN.fullmatch(value):
        token = value
    else:
        try:
            token = quote(value, safe="").replace(".", "%2E").replace("~", "%7E")
        except UnicodeEncodeError:
            raise SubjectError(
                "an aggregate id must be text that UTF-8 can encode (it holds a lone surrogate)"
            ) from None
    if len(token) > MAX_ID_TOKEN:
        raise SubjectError(
            f"an aggregate id of {len(value)} characters takes {len(token)} once encoded "
            f"for a subject, more than {MAX_ID_TOKEN} (letters, digits, '_' and '-' take one "
            "each, other characters three for each UTF-8 byte)"
        )
    return token


def decode_token(token: str) -> str:
    return unquote(token)


def subject(context: str, aggregate_type: str, aggregate_id: str, event_name: str) -> str:
    return f"{context}.{aggregate_type}.{encode_token(aggregate_id)}.{event_name}"


def aggregate_token(subject: str) -> str:
    """The aggregate id token of ``<context>.<aggregate-type>.<id>.<event>`` (encoded, as
    it is in the subject); the whole subject when it has no such token."""
    parts = subject.split(".", 3)
    return parts[2] if len(parts) > 2 else subject
