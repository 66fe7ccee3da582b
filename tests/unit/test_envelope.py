"""One envelope schema: the wire package's Envelope. The views that decode part of it
(a reader's head, the feed's check) hold only its attributes, of its types, and the
feed documents the Envelope itself."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from toolkit import wire
from toolkit.wire.envelope import EnvelopeTrace


def attributes(struct: type[msgspec.Struct]) -> dict[str, Any]:
    return {f.name: f.type for f in msgspec.structs.fields(struct)}


@pytest.mark.parametrize(
    "view", [wire.EnvelopeHead, wire.EnvelopeAttributes, wire.EnvelopeOrigin, EnvelopeTrace]
)
def test_each_view_holds_only_attributes_of_the_envelope(view: type[msgspec.Struct]) -> None:
    envelope = attributes(wire.Envelope)
    for name, kind in attributes(view).items():
        assert name in envelope, f"{view.__name__}.{name} is not an attribute of the envelope"
        if name == "data":
            assert kind is msgspec.Raw  # left undecoded
            continue
        optional = kind == envelope[name] | None
        assert kind == envelope[name] or optional, f"{view.__name__}.{name}: {kind}"


def test_the_feed_documents_the_wire_envelope() -> None:
    pytest.importorskip("fastapi")
    from toolkit.http.feed import FeedPage

    documented = FeedPage.model_json_schema()["$defs"]["CloudEvent"]
    schema = wire.envelope_json_schema()
    assert documented["properties"] == schema["properties"]
    assert documented["required"] == schema["required"]
    assert documented["properties"]["time"] == {"type": "string", "format": "date-time"}
