"""The compatibility check: each change that breaks the consumers of a contract version is
named with its field and rule; additive changes pass. The variants are contract classes,
compared through the schemas msgspec generates for them (as ``toolkit contracts`` does)."""

from __future__ import annotations

import enum
from decimal import Decimal
from typing import Literal
from uuid import UUID

import msgspec
import pytest

from toolkit import IntegrationEvent, contract
from toolkit.wire.compatibility import Break, compare
from toolkit.wire.schemas import contract_schema

pytestmark = pytest.mark.timeout(30)


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Colours(enum.Enum):
    RED = "red"
    BLUE = "blue"
    GREEN = "green"


class Line(msgspec.Struct, frozen=True):
    sku: str
    quantity: int


class RetypedLine(msgspec.Struct, frozen=True):
    sku: str
    quantity: str


class Meta(msgspec.Struct, frozen=True):
    note: str


@contract("test.Placed", version=1)
class Placed(IntegrationEvent, frozen=True, kw_only=True):
    order_id: UUID
    total: Decimal
    lines: list[Line]
    state: Literal["open", "paid"]
    colour: Colour
    extra: dict[str, Line]
    ref: int | None = None


def variant(**fields: object) -> type[IntegrationEvent]:
    """``Placed`` with fields changed: a type (required), ``(type, default)`` (optional) or
    ``REMOVED``."""
    annotations = dict(Placed.__annotations__)
    defaults = {"ref": None}
    for name, spec in fields.items():
        if spec is REMOVED:
            annotations.pop(name)
            defaults.pop(name, None)
        elif isinstance(spec, tuple):  # (type, default)
            annotations[name], defaults[name] = spec
        else:
            annotations[name] = spec
            defaults.pop(name, None)
    required = {k: v for k, v in annotations.items() if k not in defaults}
    optional = {k: v for k, v in annotations.items() if k in defaults}
    body = {"__annotations__": {**required, **optional}, **defaults}
    cls = type("Placed", (IntegrationEvent,), body, frozen=True, kw_only=True)
    return contract("test.Placed", version=1)(cls)


REMOVED = object()


def breaks(cls: type[IntegrationEvent]) -> list[Break]:
    return compare(contract_schema(Placed), contract_schema(cls))


def test_the_same_contract_passes() -> None:
    assert breaks(Placed) == []
    assert breaks(variant()) == []


@pytest.mark.parametrize(
    ("change", "path", "rule"),
    [
        ({"total": REMOVED}, "total", "removed"),
        ({"ref": REMOVED}, "ref", "removed"),
        ({"total": float}, "total", "retyped"),
        ({"order_id": str}, "order_id", "retyped"),  # a format lost: uuid -> any string
        ({"ref": int}, "ref", "now required"),
        ({"total": (Decimal, Decimal(0))}, "total", "no longer required"),
        ({"ref": (str | None, None)}, "ref", "retyped"),
        ({"ref": (int, 0)}, "ref", "retyped"),  # null no longer accepted: narrowed
        ({"added": int}, "added", "required added"),
        ({"state": Literal["open"]}, "state", "enum narrowed"),
        ({"state": Literal["open", "paid", "refunded"]}, "state", "enum widened"),
        ({"colour": Colours}, "colour", "enum widened"),
        ({"colour": Literal["red"]}, "colour", "enum narrowed"),
        ({"lines": list[RetypedLine]}, "lines[].quantity", "retyped"),
        ({"extra": dict[str, RetypedLine]}, "extra{}.quantity", "retyped"),
        ({"lines": set[Line]}, "lines", "constraint changed"),
        ({"lines": Line}, "lines", "retyped"),
    ],
    ids=lambda v: str(v) if isinstance(v, str) else None,
)
def test_a_breaking_change_is_named(change: dict[str, object], path: str, rule: str) -> None:
    found = breaks(variant(**change))
    assert (path, rule) in [(b.path, b.rule) for b in found], found


def test_additive_changes_pass() -> None:
    assert breaks(variant(comment=(str | None, None))) == []
    assert breaks(variant(count=(int, 0), meta=(Meta | None, None))) == []


def test_a_field_added_to_a_struct_that_forbids_unknown_fields_breaks() -> None:
    class Closed(msgspec.Struct, forbid_unknown_fields=True):
        a: int

    class Grown(msgspec.Struct, forbid_unknown_fields=True):
        a: int
        b: int = 0

    old = contract_schema(variant(closed=Closed))
    found = compare(old, contract_schema(variant(closed=Grown)))
    assert [(b.path, b.rule) for b in found] == [("closed.b", "added to a closed object")]


def test_the_line_names_contract_version_field_rule_and_why() -> None:
    (found,) = breaks(variant(lines=list[RetypedLine]))
    assert found.line("test.Placed", 1) == (
        "test.Placed v1: field 'lines[].quantity' retyped (integer -> string): "
        "consumers of v1 read integer"
    )
    (narrowed,) = breaks(variant(state=Literal["open"]))
    assert narrowed.line("test.Placed", 3) == (
        "test.Placed v3: field 'state' enum narrowed (removed 'paid'): messages of v3 in "
        "the stream carry them"
    )


class Node(msgspec.Struct):
    children: list[Node]


def test_a_recursive_or_self_referencing_schema_ends() -> None:
    schema = contract_schema(variant(tree=Node))
    assert compare(schema, schema) == []
    loop = {"$ref": "#/$defs/A", "$defs": {"A": {"$ref": "#/$defs/A"}}}
    assert compare(loop, loop) == []
