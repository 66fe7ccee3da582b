"""The system's streams as an AsyncAPI 3.0.0 document, for teams in other languages.

One channel per context stream, its address the subject pattern
``<context>.{aggregatetype}.{aggregateid}.{event}``; one message per contract version the
context publishes, its payload the CloudEvents JSON envelope (structured mode, exactly the
bytes on the stream) with ``data`` the contract's JSON Schema
(:func:`toolkit.wire.schemas.contract_schema`, not generated again here), ``type`` and
``schemaversion`` fixed. Each context ``send``s on its channel; each projection and policy
that declares a translator of it ``receive``s from it. Pure: the caller passes the NATS
URL; credentials in it never reach the document.

Content type: ``application/json``. The body is a CloudEvents event in its JSON format
(``application/cloudevents+json`` in CloudEvents' words), but NATS carries no content
type, and AsyncAPI's tools pick their JSON codecs by ``application/json``; the payload
schema says it is an envelope.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from toolkit.redaction import redact_urls
from toolkit.wire.contracts import event_name
from toolkit.wire.envelope import (
    DATACONTENTTYPE,
    EXPECTED_LAST_MSG_ID,
    EXPECTED_LAST_SEQUENCE,
    EXPECTED_LAST_SUBJECT_SEQUENCE,
    EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
    MSG_ID,
    SPECVERSION,
    envelope_json_schema,
)
from toolkit.wire.schemas import Published, contract_schema, published
from toolkit.wire.subjects import MAX_ID_TOKEN

if TYPE_CHECKING:
    from toolkit.read.translator import Translator
    from toolkit.system import System

ASYNCAPI = "3.0.0"
CONTENT_TYPE = "application/json"
ENVELOPE = "CloudEventsEnvelope"
HEADERS = "RelayHeaders"
EMBEDDED_HOST = "localhost:{port}"
"""The host of a system on its data folder's embedded server (no NATS URL given)."""
_PLACEHOLDER = "__defs__"
"""Where :func:`contract_schema` puts nested structs before they move to components."""


def asyncapi_document(
    system: System,
    *,
    servers: str | Sequence[str] | None,
    title: str = "Toolkit",
    version: str = "1",
) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of ``system``'s streams. ``servers``: the NATS URL
    (comma-separated, as ``NATS_URL``) or URLs the system uses, credentials removed here;
    None: the data folder's embedded server. ``version``, as the OpenAPI document's, is
    the document's: each message names its contract's version."""
    contracts = published(system)
    components: dict[str, Any] = {
        "schemas": {ENVELOPE: _envelope(), HEADERS: _headers()},
        "messages": {},
        "parameters": {"aggregateid": _aggregate_id()},
    }
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for context in system.contexts:
        own = [entry for entry in contracts if entry.context == context]
        subjects = _subjects(system, context)
        channels[context] = _channel(context, own, subjects)
        for entry in own:
            key = message_key(entry)
            components["schemas"][key] = _contract(entry, components["schemas"])
            components["messages"][key] = _message(entry, subjects)
        if own:
            operations[f"{context}.send"] = {
                "action": "send",
                "channel": {"$ref": f"#/channels/{context}"},
                "title": f"{context} publishes",
                "summary": f"The {context} context's relay publishes its log's integration "
                f"events in log order, each once (JetStream drops a duplicate {MSG_ID}).",
                "messages": [_channel_message(context, entry) for entry in own],
            }
    for key, operation in _readers(system, contracts):
        operations[key] = operation
    return {
        "asyncapi": ASYNCAPI,
        "info": {
            "title": title,
            "version": version,
            "description": (
                "The integration events this system's contexts publish on NATS JetStream, "
                "one stream per context, each message a CloudEvents 1.0 JSON envelope "
                "whose data is a versioned contract; and which of its projections and "
                "policies read them."
            ),
        },
        "servers": server_entries(servers),
        "defaultContentType": CONTENT_TYPE,
        "channels": channels,
        "operations": operations,
        "components": components,
    }


def encoded(document: dict[str, Any], *, yaml: bool = False) -> bytes:
    """The document as served and printed: JSON (indented), or YAML (``safe_dump``, in
    the document's order) that loads as the same document."""
    if yaml:
        import yaml as pyyaml  # only the YAML form needs it

        text = pyyaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
        return text.encode()
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()


def server_entries(servers: str | Sequence[str] | None) -> dict[str, Any]:
    """AsyncAPI servers of a NATS URL or list (``nats://u:p@a:4222,nats://b:4222``): host
    and port only, never credentials, user names or options."""
    urls = [servers] if isinstance(servers, str) else list(servers or ())
    hosts = [part.strip() for url in urls for part in url.split(",") if part.strip()]
    if not hosts:
        return {
            "nats": {
                "host": EMBEDDED_HOST,
                "protocol": "nats",
                "description": "The data folder's embedded nats-server ('toolkit status' "
                "names its URL).",
                "variables": {"port": {"default": "4222"}},
            }
        }
    entries: dict[str, Any] = {}
    for number, url in enumerate(hosts, start=1):
        parts = urlsplit(redact_urls(url if "://" in url else f"nats://{url}"))
        host = parts.netloc.rpartition("@")[2]
        secure = parts.scheme in ("tls", "wss")
        entries["nats" if len(hosts) == 1 else f"nats-{number}"] = {
            "host": host,
            "protocol": "nats" if parts.scheme in ("nats", "tls", "") else parts.scheme,
            "description": "NATS with TLS." if secure else "NATS.",
        }
    return entries


def message_key(entry: Published) -> str:
    """``sales.OrderPlaced.v1``: the message's and its contract schema's component name."""
    return f"{entry.name}.v{entry.version}"


def _channel_key(entry: Published) -> str:
    """``OrderPlaced.v1``: the message's name in its channel."""
    return f"{event_name(entry.name)}.v{entry.version}"


def _channel_message(context: str, entry: Published) -> dict[str, str]:
    return {"$ref": f"#/channels/{context}/messages/{_channel_key(entry)}"}


def _subjects(system: System, context: str) -> dict[tuple[str, int], list[str]]:
    """The aggregate types each contract version of ``context`` is published under."""
    language = getattr(system.contexts[context], "published_language", None)
    found: dict[tuple[str, int], list[str]] = {}
    for topic in getattr(language, "topics", ()):
        mapping = language.mapping(topic)  # type: ignore[union-attr]
        types = found.setdefault((mapping.contract_name, mapping.version), [])
        if mapping.aggregate_type not in types:
            types.append(mapping.aggregate_type)
    return {key: sorted(types) for key, types in found.items()}


def _channel(
    context: str, own: list[Published], subjects: dict[tuple[str, int], list[str]]
) -> dict[str, Any]:
    aggregates = sorted({t for types in subjects.values() for t in types})
    events = sorted({event_name(entry.name) for entry in own})
    aggregate: dict[str, Any] = {"description": "The aggregate type (a name, as is)."}
    event: dict[str, Any] = {
        "description": "The contract's name after its context (`OrderPlaced` of "
        "`sales.OrderPlaced`); every version of a contract has the same token, and the "
        "envelope's `schemaversion` tells them apart."
    }
    if aggregates:
        aggregate["enum"] = aggregates
    if events:
        event["enum"] = events
    return {
        "address": f"{context}.{{aggregatetype}}.{{aggregateid}}.{{event}}",
        "title": f"{context} stream",
        "description": (
            f"The JetStream stream {context}: every integration event the {context} "
            "context publishes, in its log's order. Subscribe to "
            f"`{context}.>` for all of them, to `{context}.<aggregatetype>.*.*` for "
            "one aggregate type; the stream sequence orders them, and the envelope's "
            "`logposition` is the position in the context's log."
        ),
        "parameters": {
            "aggregatetype": aggregate,
            "aggregateid": {"$ref": "#/components/parameters/aggregateid"},
            "event": event,
        },
        "messages": {
            _channel_key(entry): {"$ref": f"#/components/messages/{message_key(entry)}"}
            for entry in own
        },
    }


def _aggregate_id() -> dict[str, Any]:
    return {
        "description": (
            "The aggregate id as one subject token: letters, digits, `_` and `-` stay "
            "as they are (UUIDs are unchanged); every other character is percent-encoded "
            "from its UTF-8 bytes, `.` and `~` included, so no id adds a token or a "
            f"wildcard. At most {MAX_ID_TOKEN} characters once encoded. The envelope's "
            "`subject` holds the id as it is (not encoded)."
        ),
        "examples": ["0f8fad5b-d9cb-469f-a165-70867728950e", "SKU%2E42%20blue"],
    }


def _headers() -> dict[str, Any]:
    number = {"type": "string", "pattern": "^[0-9]+$"}
    return {
        "type": "object",
        "description": (
            "The headers the relay publishes with: nothing else of the event is in "
            "headers (metadata rides in the envelope)."
        ),
        "properties": {
            MSG_ID: {
                "type": "string",
                "pattern": "^[A-Za-z][A-Za-z0-9_-]{0,63}(@[0-9]{1,20})?:[0-9]{1,19}$",
                "description": (
                    "`<context>:<log position>`, equal to the envelope's `id`, so that "
                    "JetStream drops a duplicate (`<context>@<epoch>:<position>` when "
                    "published again after the stream lost it)."
                ),
            },
            EXPECTED_LAST_SEQUENCE: {
                **number,
                "description": "The stream sequence the relay expects last: its messages "
                "form a chain, none published twice or out of order.",
            },
            EXPECTED_LAST_MSG_ID: {
                "type": "string",
                "description": "The message id the relay expects last (with the sequence).",
            },
            EXPECTED_LAST_SUBJECT_SEQUENCE: {
                **number,
                "description": "On the relay's first message after a rest (nats-server 2.11 "
                "on): the sequence of its previous message, expected to be still the last "
                "on the subject named by the next header, so that a stream that lost its "
                "tail meanwhile refuses the message.",
            },
            EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: {
                "type": "string",
                "description": "The subject of the relay's previous message (with the "
                "header above).",
            },
        },
        "required": [MSG_ID],
    }


def _envelope() -> dict[str, Any]:
    schema = envelope_json_schema()
    schema["title"] = "CloudEvents envelope"
    schema["properties"]["specversion"]["const"] = SPECVERSION
    schema["properties"]["datacontenttype"]["const"] = DATACONTENTTYPE
    return schema


def _message(entry: Published, subjects: dict[tuple[str, int], list[str]]) -> dict[str, Any]:
    key = message_key(entry)
    doc = (entry.contract.__doc__ or "").strip()
    fixed: dict[str, Any] = {
        "type": {"const": entry.name},
        "schemaversion": {"const": entry.version},
        "source": {"const": entry.context},
        "id": {"pattern": f"^{entry.context}:[0-9]+$"},
        "data": {"$ref": f"#/components/schemas/{key}"},
    }
    aggregates = subjects.get((entry.name, entry.version), [])
    if aggregates:
        one = len(aggregates) == 1  # a constant: generators make it a literal, not an enum
        fixed["aggregatetype"] = {"const": aggregates[0]} if one else {"enum": aggregates}
    message: dict[str, Any] = {
        "name": key,
        "title": f"{entry.name} v{entry.version}",
        "summary": doc.split("\n\n")[0].replace("\n", " ")
        or f"{entry.name}, version {entry.version}, published by {entry.context}.",
        "contentType": CONTENT_TYPE,
        "headers": {"$ref": f"#/components/schemas/{HEADERS}"},
        "payload": {
            "title": f"{key} envelope",  # names the class a generator makes of it
            "allOf": [
                {"$ref": f"#/components/schemas/{ENVELOPE}"},
                {"type": "object", "properties": fixed},
            ],
        },
        "correlationId": {
            "description": "The chain of events this one belongs to (a policy's effects "
            "carry the correlation id of what they react to).",
            "location": "$message.payload#/correlationid",
        },
    }
    if aggregates:
        message["description"] = "Subjects: " + ", ".join(
            f"`{entry.context}.{t}.<id>.{event_name(entry.name)}`" for t in aggregates
        )
    return message


def _contract(entry: Published, schemas: dict[str, Any]) -> dict[str, Any]:
    """The contract's schema, its nested structs moved to ``schemas`` (under another
    name when one of that name is a different schema) and its references with them."""
    schema = contract_schema(entry.contract, defs=_PLACEHOLDER)
    schema.pop("$schema", None)  # an AsyncAPI schema: draft 07's superset, by the document
    nested: dict[str, Any] = schema.pop(_PLACEHOLDER, {})
    same = {name: name for name in nested}
    names = {
        name: name
        if schemas.get(name, _moved(definition, same)) == _moved(definition, same)
        else f"{message_key(entry)}.{name}"
        for name, definition in nested.items()
    }
    for name, definition in nested.items():
        schemas[names[name]] = _moved(definition, names)
    moved: dict[str, Any] = _moved(schema, names)
    return moved


def _moved(schema: Any, names: dict[str, str]) -> Any:
    """``schema`` with its references to nested structs pointing at their components."""
    if isinstance(schema, dict):
        moved = {key: _moved(value, names) for key, value in schema.items()}
        ref = moved.get("$ref")
        if isinstance(ref, str) and ref.startswith(f"#/{_PLACEHOLDER}/"):
            moved["$ref"] = f"#/components/schemas/{names[ref.rpartition('/')[2]]}"
        return moved
    if isinstance(schema, list):
        return [_moved(value, names) for value in schema]
    return schema


def _readers(system: System, contracts: list[Published]) -> Iterator[tuple[str, dict[str, Any]]]:
    """A ``receive`` operation for each projection and policy, for each stream of the
    system it declares a translator of: the messages of that stream it reads."""
    readers: list[tuple[str, str, str, Iterable[Translator]]] = [
        (f"projection.{name}", f"projection {name}", "builds a read model from", cls.translators)
        for name, cls in system.projections.items()
    ]
    readers += [
        (
            f"policy.{name}",
            f"policy {name} (of {cls.context_name()})",
            f"makes {cls.context_name()} react to",
            cls.translators,
        )
        for name, cls in system.policies.items()
    ]
    for key, who, does, translators in readers:
        for translator in translators:
            stream = translator.stream
            if stream not in system.contexts:
                continue  # a stream from outside the system: not described here
            read = [
                entry
                for entry in contracts
                if entry.context == stream and _reads(translator, entry)
            ]
            yield (
                f"{key}.receive.{stream}",
                {
                    "action": "receive",
                    "channel": {"$ref": f"#/channels/{stream}"},
                    "title": f"{who} reads {stream}",
                    "summary": f"The {who} {does} the {stream} stream's events listed here; it "
                    "skips the others (a tolerant reader).",
                    "messages": [_channel_message(stream, entry) for entry in read],
                },
            )


def _reads(translator: Translator, entry: Published) -> bool:
    try:
        translator.check_readable(entry.name, entry.version)
    except Exception:  # UnknownEvent or ContractError: not a version it reads
        return False
    return True
