from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID, uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from toolkit import ContractError, ContractRegistry, IntegrationEvent, contract
from toolkit.errors import SubjectError
from toolkit.wire import check_name, decode_token, encode_token, subject
from toolkit.wire.contracts import encode, event_name


@contract("sales.Thing", version=2)
class Thing(IntegrationEvent, frozen=True, kw_only=True):
    id: UUID
    amount: Decimal
    at: datetime


def test_contract_has_stable_name_and_version() -> None:
    assert (Thing.__contract_name__, Thing.__contract_version__) == ("sales.Thing", 2)
    assert event_name("sales.Thing") == "Thing"


@pytest.mark.parametrize(
    "name", ["Thing", "sales.", ".Thing", "sales.Th ing", "sales.Th.ing", "1.A"]
)
def test_contract_rejects_bad_names(name: str) -> None:
    with pytest.raises(ContractError, match="invalid contract name"):
        contract(name)


@pytest.mark.parametrize("version", [0, -1, True, "1"])
def test_contract_rejects_bad_versions(version: object) -> None:
    with pytest.raises(ContractError, match="invalid version"):
        contract("sales.Thing", version=version)  # type: ignore[arg-type]


def test_round_trip_keeps_decimals_uuids_and_times() -> None:
    @contract("sales.Priced")
    class Priced(IntegrationEvent, frozen=True, kw_only=True):
        order_id: UUID
        total: Decimal
        at: datetime

    event = Priced(order_id=uuid4(), total=Decimal("12.30"), at=datetime.now(UTC))
    body = encode(event)
    assert b'"total":"12.30"' in body
    registry = ContractRegistry([Priced])
    assert registry.decode("sales.Priced", 1, body) == event


def test_registry_errors_are_clear() -> None:
    @contract("sales.Small")
    class Small(IntegrationEvent, frozen=True, kw_only=True):
        n: int

    @contract("sales.Small")
    class Other(IntegrationEvent, frozen=True, kw_only=True):
        n: int

    registry = ContractRegistry([Small])
    with pytest.raises(ContractError, match="already registered"):
        registry.register(Other)
    with pytest.raises(ContractError, match="not valid JSON"):
        registry.decode("sales.Small", 1, b"{nope")
    with pytest.raises(ContractError, match="does not match its contract"):
        registry.decode("sales.Small", 1, b'{"n": "seven"}')
    with pytest.raises(ContractError, match="no class registered"):
        registry.decode("sales.Small", 2, b'{"n": 7}')


def test_unmarked_class_is_refused() -> None:
    class Bare(IntegrationEvent, frozen=True):
        pass

    with pytest.raises(ContractError, match="not marked"):
        ContractRegistry([Bare])


@given(st.text(min_size=1))
def test_any_id_is_one_token_that_round_trips(value: str) -> None:
    token = encode_token(value)
    assert decode_token(token) == value
    assert token and not any(c in token for c in ".*> \t\r\n")
    assert all(32 < ord(c) < 127 for c in token)
    assert subject("sales", "order", value, "OrderPlaced").split(".")[2] == token


def test_uuids_stay_readable_in_subjects() -> None:
    order_id = str(uuid4())
    assert (
        subject("sales", "order", order_id, "OrderPlaced") == f"sales.order.{order_id}.OrderPlaced"
    )


@pytest.mark.parametrize("value", ["", None])
def test_empty_ids_are_refused(value: str | None) -> None:
    with pytest.raises(SubjectError):
        encode_token(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "a.b", "a*", ">", "a b", "é", "1abc", "x" * 65])
def test_names_that_would_change_matching_are_refused(name: str) -> None:
    with pytest.raises(SubjectError, match="invalid"):
        check_name("context", name)
