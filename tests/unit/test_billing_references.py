"""Billing checks sales' ids itself (projections.billing.translation): it must refuse
exactly what the contract's pattern refuses, whole (as JSON Schema reads it: msgspec's
``Meta(pattern=REFERENCE)``, which checked them before, let a final newline through), in
msgspec's words, and a message so refused is still a dead letter with the reason."""

from __future__ import annotations

import json
import re
import uuid
from decimal import Decimal
from typing import Annotated, Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projections.billing import Accounts
from projections.billing.translation import (
    REFERENCE,
    CustomerRegistered,
    OrderCancelled,
    OrderPlaced,
    cents,
    is_reference,
)
from toolkit.testing import ProjectionHarness, relayed_event

MANY = settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))

WHOLE = REFERENCE.removesuffix("$") + r"\Z"
"""The pattern as Python reads it whole (``$`` there also matches before a final newline)."""
PatternReference = Annotated[str, msgspec.Meta(pattern=WHOLE)]


class PatternCustomerRegistered(msgspec.Struct, frozen=True, kw_only=True):
    customer_id: PatternReference
    name: str


class PatternOrderPlaced(msgspec.Struct, frozen=True, kw_only=True):
    order_id: PatternReference
    customer_id: PatternReference
    total: Decimal


class PatternOrderCancelled(msgspec.Struct, frozen=True, kw_only=True):
    order_id: PatternReference


PAIRS: list[tuple[type[msgspec.Struct], type[msgspec.Struct]]] = [
    (CustomerRegistered, PatternCustomerRegistered),
    (OrderPlaced, PatternOrderPlaced),
    (OrderCancelled, PatternOrderCancelled),
]

NASTY = ".*>%-\n\r\t \x00\x7f_+AFG/:\\\"'é\u00e9\u0660\uff10\ud800\U0001f600"
"""Characters a hostile id would use: NATS wildcards and separators, escapes, upper
case and letters past f, non-ASCII digits and letters, a lone surrogate, an emoji."""


@st.composite
def near_references(draw: st.DrawFn) -> str:
    """A canonical UUID's text with a character changed, added or removed, or a
    newline or other text after it."""
    text = str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1))))
    at = draw(st.integers(0, len(text)))
    nasty = draw(st.sampled_from(NASTY) | st.characters())
    how = draw(st.sampled_from(["replace", "insert", "delete", "append", "twice", "none"]))
    if how == "replace":
        return text[:at] + nasty + text[at + 1 :]
    if how == "insert":
        return text[:at] + nasty + text[at:]
    if how == "delete":
        return text[:at] + text[at + 1 :]
    if how == "append":
        return text + draw(st.sampled_from(["\n", "\n\n", "\r\n", " ", "0", "\n0"]))
    if how == "twice":
        return text + text
    return text


ids = (
    near_references()
    | st.from_regex(REFERENCE)  # with or without the final newline Python's ``$`` takes
    | st.text(alphabet=st.sampled_from("0123456789abcdef-" + NASTY), max_size=40)
    | st.text(alphabet=st.characters(codec=None), max_size=40)
    | st.sampled_from(["", "\n", "-" * 36, "0" * 36, "0" * 10_000, "\n" * 37])
)


@MANY
@given(text=ids)
def test_a_reference_is_what_the_pattern_matches(text: str) -> None:
    assert is_reference(text) == (re.fullmatch(REFERENCE, text) is not None)
    assert is_reference(text) == (re.search(WHOLE, text) is not None)


def outcome(decoder: msgspec.json.Decoder[Any], body: bytes) -> tuple[bool, str]:
    try:
        decoder.decode(body)
    except msgspec.DecodeError as exc:  # a ValidationError, or a lone surrogate's escape
        return False, f"{type(exc).__name__}: {exc}"
    return True, ""


@MANY
@given(first=ids, second=ids, which=st.sampled_from(PAIRS))
def test_contracts_refuse_what_the_pattern_refused_in_its_words(
    first: str, second: str, which: tuple[type[msgspec.Struct], type[msgspec.Struct]]
) -> None:
    checked, patterned = which
    data: dict[str, Any] = {"name": "Ada", "total": "1.25", "placed_at": "now"}
    for field, text in zip(checked.__struct_fields__, (first, second), strict=False):
        if field.endswith("_id"):
            data[field] = text
    body = json.dumps(data).encode()  # (escaped: lone surrogates too)
    taken, reason = outcome(msgspec.json.Decoder(checked), body)
    taken_before, said = outcome(msgspec.json.Decoder(patterned), body)
    before = taken_before, said.replace(repr(WHOLE), repr(REFERENCE))  # (the words)
    assert taken == before[0]
    bad = [f for f, text in data.items() if f.endswith("_id") and not re.fullmatch(REFERENCE, text)]
    if len(bad) <= 1:
        assert (taken, reason) == before  # in the same words
    else:
        # The pattern stopped at the first bad id in the body; the check looks at them
        # once all are decoded, in the class's order (or meets an escaped lone surrogate,
        # which no JSON decoder takes, first): a bad one is named.
        assert reason in [f"ValidationError: {pattern_error(f)}" for f in bad] or (
            reason.startswith("DecodeError")
        )


def pattern_error(field: str) -> str:
    return f"Expected `str` matching regex {REFERENCE!r} - at `$.{field}`"


def test_a_contract_built_with_a_bad_reference_is_refused_too() -> None:
    good = str(uuid.uuid4())
    for bad in ["", good.upper(), f"{good}.>", f"{good}\n", f"{good}\n\n"]:
        try:
            OrderPlaced(order_id=good, customer_id=bad, total=Decimal(1))
        except ValueError as exc:
            assert str(exc).endswith("at `$.customer_id`")
        else:
            raise AssertionError(f"{bad!r} taken for a reference")
    assert OrderPlaced(order_id=good, customer_id=good, total=Decimal(1))


def test_an_order_with_a_hostile_id_is_a_dead_letter_with_the_reason() -> None:
    customer = str(uuid.uuid4())
    placed = {"customer_id": customer, "total": "1.25"}
    events = [
        relayed_event(
            "sales.CustomerRegistered", {"customer_id": customer, "name": "Ada"}, position=1
        ),
        relayed_event("sales.OrderPlaced", {**placed, "order_id": "sales.*.>"}, position=2),
        relayed_event(
            "sales.OrderPlaced",
            {**placed, "order_id": str(uuid.uuid4())},
            position=3,
            aggregate_id="y",
        ),
    ]
    with ProjectionHarness(Accounts()) as billing:
        counts = billing.feed(events)
        assert (counts.applied, counts.dead_lettered) == (2, 1)
        (dead,) = billing.dead_letters
        assert dead.sequence == 2
        assert dead.reason == (
            "sales.OrderPlaced v1 does not match its contract: Expected `str` matching "
            f"regex {REFERENCE!r} - at `$.order_id`"
        )
        assert billing.query("SELECT owed_cents, open_charges FROM account") == [(125, 1)]


@MANY
@given(
    amount=st.decimals(allow_nan=True, allow_infinity=True)
    | st.decimals(places=3, min_value=-(10**6), max_value=10**6)
)
def test_cents_round_half_to_even_as_before(amount: Decimal) -> None:
    def before(amount: Decimal) -> int | str:
        from decimal import ROUND_HALF_EVEN

        try:
            return int((amount * 100).to_integral_value(rounding=ROUND_HALF_EVEN))
        except Exception as exc:  # the same error either way
            return type(exc).__name__

    try:
        now: int | str = cents(amount)
    except Exception as exc:
        now = type(exc).__name__
    assert now == before(amount)
