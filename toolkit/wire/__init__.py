"""The wire contract: subjects, the CloudEvents envelope, the relay's headers and
integration-event contracts. No I/O: everything here is what any NATS client in any
language can read off a context's stream."""

from toolkit.wire.envelope import (
    DATACONTENTTYPE,
    EXPECTED_LAST_MSG_ID,
    EXPECTED_LAST_SEQUENCE,
    MAX_LOG_POSITION,
    MSG_ID,
    SPECVERSION,
    Envelope,
    EnvelopeAttributes,
    EnvelopeHead,
    brief,
    decode_attributes,
    decode_head,
    encode_envelope,
    envelope_json_schema,
    log_position,
    message_id,
    message_id_context,
    relay_position,
    relayed_head,
)
from toolkit.wire.subjects import MAX_ID_TOKEN, check_name, decode_token, encode_token, subject

__all__ = [
    "DATACONTENTTYPE",
    "EXPECTED_LAST_MSG_ID",
    "EXPECTED_LAST_SEQUENCE",
    "MAX_ID_TOKEN",
    "MAX_LOG_POSITION",
    "MSG_ID",
    "SPECVERSION",
    "Envelope",
    "EnvelopeAttributes",
    "EnvelopeHead",
    "brief",
    "check_name",
    "decode_attributes",
    "decode_head",
    "decode_token",
    "encode_envelope",
    "encode_token",
    "envelope_json_schema",
    "log_position",
    "message_id",
    "message_id_context",
    "relay_position",
    "relayed_head",
    "subject",
]
