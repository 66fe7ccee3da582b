from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    TranscodingNotRegisteredError,
    UUIDAsHex,
)
from hypothesis import given
from hypothesis import strategies as st

from contexts.sales import Sales
from toolkit.transcoder import OrjsonTranscoder


def registered(transcoder: JSONTranscoder) -> JSONTranscoder:
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
        transcoder.register(transcoding)
    return transcoder


zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.text(),
    st.uuids(),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.datetimes(timezones=zones),
    st.floats(allow_nan=False, allow_infinity=False),
)
states = st.dictionaries(
    st.text(),
    st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=12,
    ),
    max_size=6,
)


@given(states)
def test_round_trips_and_reads_what_eventsourcing_wrote(state: dict[str, Any]) -> None:
    fast, standard = registered(OrjsonTranscoder()), registered(JSONTranscoder())
    assert fast.decode(fast.encode(state)) == state
    assert fast.decode(standard.encode(state)) == state
    assert standard.decode(fast.encode(state)) == state


def test_types_survive_exactly() -> None:
    fast = registered(OrjsonTranscoder())
    state = {
        "id": UUID("5f0c7f3e-9c1e-4a59-8f0e-2b6f3f1a0c11"),
        "price": Decimal("12.30"),
        "at": datetime(2026, 11, 24, 6, 43, 30, 593382, tzinfo=UTC),
        "nested": [{"qty": 2, "tags": ("a", "b")}],
    }
    back = fast.decode(fast.encode(state))
    assert type(back["id"]) is UUID and type(back["price"]) is Decimal
    assert str(back["price"]) == "12.30" and back["at"] == state["at"]
    assert back["nested"] == [{"qty": 2, "tags": ["a", "b"]}]  # tuples come back as lists


def test_unregistered_types_are_refused_clearly() -> None:
    with pytest.raises(TranscodingNotRegisteredError, match="not serializable"):
        registered(OrjsonTranscoder()).encode({"x": object()})
    with pytest.raises(TranscodingNotRegisteredError, match="not deserializable"):
        registered(OrjsonTranscoder()).decode(b'{"x": {"_type_": "nope", "_data_": 1}}')


def test_contexts_use_it_by_default(sales: Sales) -> None:
    assert isinstance(sales.mapper.transcoder, OrjsonTranscoder)


def test_every_form_uuid_accepts_still_decodes() -> None:
    """UUIDs decode in C for the forms eventsourcing writes; the other forms ``UUID``
    accepts go to ``UUID`` itself, and a malformed one is refused as before."""
    fast = registered(OrjsonTranscoder())
    u = UUID("5f0c7f3e-9c1e-4a59-8f0e-2b6f3f1a0c11")
    for written in (u.hex, str(u), str(u).upper(), f"{{{u}}}", f"urn:uuid:{u}"):
        state = fast.decode(b'{"id": {"_type_": "uuid_hex", "_data_": "%s"}}' % written.encode())
        assert state == {"id": u} and type(state["id"]) is UUID
    with pytest.raises(ValueError):
        fast.decode(b'{"id": {"_type_": "uuid_hex", "_data_": "not-a-uuid"}}')


def test_a_transcoding_registered_under_a_standard_name_is_the_one_used() -> None:
    class UpperDecimal(DecimalAsStr):
        def decode(self, data: str) -> Decimal:
            return Decimal(data) * 2

    fast = registered(OrjsonTranscoder())
    fast.register(UpperDecimal())
    assert fast.decode(b'{"p": [{"_type_": "decimal_str", "_data_": "1.5"}]}') == {
        "p": [Decimal("3.0")]
    }
