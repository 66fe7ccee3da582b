"""Schema evolution at the consumer: older versions upcast, newer ones dead-lettered,
unknown types skipped; and no body, however hostile, stops a translator."""

from __future__ import annotations

import contextlib
from decimal import Decimal

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projections.shipping import Shipments
from tests.envelopes import stream_message
from toolkit import ContractError, IntegrationEvent, contract
from toolkit.read.reader import StreamMessage
from toolkit.read.translator import Translator, UnknownEvent


@contract("sales.OrderPlaced", version=1)
class PlacedV1(IntegrationEvent, frozen=True, kw_only=True):
    order_id: str
    amount: str  # v1 sent the total as text, in euros


@contract("sales.OrderPlaced", version=2)
class PlacedV2(IntegrationEvent, frozen=True, kw_only=True):
    order_id: str
    total: Decimal
    currency: str


@contract("sales.OrderPlaced", version=3)
class PlacedV3(IntegrationEvent, frozen=True, kw_only=True):
    order_id: str
    total_cents: int
    currency: str


class Charge(msgspec.Struct, frozen=True):
    order_id: str
    cents: int
    currency: str


def translator() -> Translator:
    sales = Translator("sales")

    @sales.on(PlacedV3)
    def placed(e: PlacedV3) -> Charge:
        return Charge(e.order_id, e.total_cents, e.currency)

    @sales.upcast(PlacedV2, to=PlacedV3)
    def v2_to_v3(e: PlacedV2) -> PlacedV3:
        return PlacedV3(order_id=e.order_id, total_cents=int(e.total * 100), currency=e.currency)

    @sales.upcast(PlacedV1, to=PlacedV2)
    def v1_to_v2(e: PlacedV1) -> PlacedV2:
        return PlacedV2(order_id=e.order_id, total=Decimal(e.amount), currency="EUR")

    return sales


def message(type_: str, version: int, data: object) -> StreamMessage:
    """The relay's message for order ``o1`` at sequence 1, of ``type_`` at ``version``."""
    return stream_message(1, type_, data, schemaversion=version, aggregate_id="o1")


def test_older_versions_are_upcast_step_by_step() -> None:
    sales = translator()
    expected = [Charge("o1", 1250, "EUR")]
    assert (
        sales.translate(message("sales.OrderPlaced", 1, {"order_id": "o1", "amount": "12.50"}))
        == expected
    )
    v2 = {"order_id": "o1", "total": "12.50", "currency": "EUR"}
    assert sales.translate(message("sales.OrderPlaced", 2, v2)) == expected
    v3 = {"order_id": "o1", "total_cents": 1250, "currency": "EUR"}
    assert sales.translate(message("sales.OrderPlaced", 3, v3)) == expected


def test_a_newer_version_is_a_contract_error_not_a_crash() -> None:
    with pytest.raises(ContractError, match=r"v4 is newer than this consumer reads \(up to v3\)"):
        translator().translate(message("sales.OrderPlaced", 4, {}))


def test_an_older_version_without_upcaster_is_a_contract_error() -> None:
    sales = Translator("sales")
    sales.on(PlacedV3)(lambda e: None)
    with pytest.raises(ContractError, match="v1 has no upcaster"):
        sales.translate(message("sales.OrderPlaced", 1, {"order_id": "o1", "amount": "1"}))


def test_unknown_types_are_skipped() -> None:
    with pytest.raises(UnknownEvent):
        translator().translate(message("sales.InvoiceSent", 1, {}))


def test_upcasters_must_go_forward_within_one_contract() -> None:
    with pytest.raises(ContractError, match="newer version of the same contract"):
        Translator("sales").upcast(PlacedV2, to=PlacedV1)


def test_one_reading_per_version() -> None:
    sales = translator()
    with pytest.raises(ContractError, match="already read"):
        sales.on(PlacedV3)(lambda e: None)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(bodies=st.lists(st.binary(max_size=200) | st.text(max_size=200).map(str.encode), max_size=8))
def test_no_body_stops_the_translator(bodies: list[bytes]) -> None:
    """Any body ends as facts, a skip or a contract error (a dead letter), never as
    another exception that would stop the consumer."""
    translator = Shipments.translators[0]
    for i, body in enumerate(bodies):
        with contextlib.suppress(ContractError, UnknownEvent):
            translator.translate(StreamMessage("sales", i + 1, "sales.order.x.E", {}, body))
