"""JSON Schema of each contract version: the published language as an open document.

A contract is a Python class; a team writing another language reads its JSON Schema
instead. msgspec generates it from the Struct, so the schema says what the encoder writes
and the decoder takes (decimals as strings, UUIDs canonical, datetimes RFC 3339), and
nothing is kept by hand beside the class. A schema is self-contained: the structs a
contract nests are under ``$defs`` of its own document.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec
import msgspec.inspect as mi

from toolkit.wire.contracts import IntegrationEvent, contract_of

if TYPE_CHECKING:
    from toolkit.system import System

DIALECT = "https://json-schema.org/draft/2020-12/schema"


class Published(NamedTuple):
    """A contract version that a context publishes, and the class that defines it."""

    context: str
    name: str
    """``sales.OrderPlaced``"""
    version: int
    contract: type[IntegrationEvent]


def contract_schema(cls: type[IntegrationEvent], *, defs: str = "$defs") -> dict[str, Any]:
    """The JSON Schema of contract ``cls``: an object schema whose nested structs are
    under ``defs`` (``"definitions"`` for documents read as draft 07, as AsyncAPI's)."""
    name, version = contract_of(cls)
    structs: dict[type, mi.StructType] = {}
    _structs(mi.type_info(cls), structs)
    refs, components = msgspec.json.schema_components(
        tuple(structs), ref_template=f"#/{defs}/{{name}}"
    )
    names = {c: ref["$ref"].rpartition("/")[2] for c, ref in zip(structs, refs, strict=True)}
    for struct, info in structs.items():
        for field in info.fields:
            _datetimes(field.type, components[names[struct]]["properties"][field.encode_name])
    schema: dict[str, Any] = {"$schema": DIALECT, **components.pop(names[cls])}
    schema["title"] = f"{name} v{version}"
    schema["description"] = (cls.__doc__ or "").strip() or f"Contract {name}, version {version}."
    if components:
        schema[defs] = components
    return schema


DATETIME = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})?$"
)
"""A ``datetime`` field's strings: RFC 3339 with the offset optional, as msgspec writes
(a naive datetime has none) and reads them. msgspec 0.23 gives such a field no format,
and ``date-time`` would refuse a naive one: the pattern says what the field holds."""
NAIVE_DATETIME = DATETIME.replace(r"([Zz]|[+-][0-9]{2}:[0-9]{2})?$", "$")
"""A naive-only field's (``Meta(tz=False)``) strings: no offset."""


def _structs(info: mi.Type, found: dict[type, mi.StructType]) -> None:
    """Every struct type ``info`` holds, itself first, each once (a recursive one too)."""
    while isinstance(info, mi.Metadata):
        info = info.type
    if isinstance(info, mi.StructType):
        if info.cls in found:
            return
        found[info.cls] = info
        inner = [field.type for field in info.fields]
    elif isinstance(info, mi.CollectionType):
        inner = [info.item_type]
    elif isinstance(info, mi.TupleType):
        inner = list(info.item_types)
    elif isinstance(info, mi.DictType | mi.FrozenDictType):
        inner = [info.key_type, info.value_type]
    elif isinstance(info, mi.UnionType):
        inner = list(info.types)
    else:
        return
    for each in inner:
        _structs(each, found)


def _datetimes(info: mi.Type, node: Any) -> None:
    """Give the ``datetime`` fields of ``node`` (the schema msgspec wrote for ``info``)
    their :data:`DATETIME` pattern; a struct's own fields are given theirs apart."""
    while isinstance(info, mi.Metadata):
        info = info.type
    if not isinstance(node, dict) or "$ref" in node:
        return
    if isinstance(info, mi.DateTimeType) and info.tz is not True:
        if node.get("type") == "string":
            node.setdefault("pattern", DATETIME if info.tz is None else NAIVE_DATETIME)
    elif isinstance(info, mi.CollectionType):
        _datetimes(info.item_type, node.get("items"))
    elif isinstance(info, mi.TupleType):
        for item, item_node in zip(info.item_types, node.get("prefixItems", ()), strict=False):
            _datetimes(item, item_node)
    elif isinstance(info, mi.DictType | mi.FrozenDictType):
        _datetimes(info.value_type, node.get("additionalProperties"))
    elif isinstance(info, mi.UnionType):
        # msgspec lists a union's members other than structs and None first, in order
        others = [t for t in info.types if not _struct_or_none(t)]
        for member, member_node in zip(others, node.get("anyOf", ()), strict=False):
            _datetimes(member, member_node)


def _struct_or_none(info: mi.Type) -> bool:
    while isinstance(info, mi.Metadata):
        info = info.type
    return isinstance(info, mi.NoneType) or (
        isinstance(info, mi.StructType) and not info.array_like
    )


def published(system: System) -> list[Published]:
    """Every contract version the system's contexts publish, by context then name then
    version (a contract two domain events map to is listed once)."""
    found: dict[tuple[str, str, int], Published] = {}
    for context, cls in system.contexts.items():
        language = getattr(cls, "published_language", None)
        for contract in getattr(language, "contracts", ()):
            name, version = contract_of(contract)
            found.setdefault((context, name, version), Published(context, name, version, contract))
    return [found[key] for key in sorted(found)]


def schemas(contracts: Iterable[Published]) -> dict[str, dict[int, dict[str, Any]]]:
    """The JSON Schema of each contract version, by contract name then version."""
    by_name: dict[str, dict[int, dict[str, Any]]] = {}
    for entry in contracts:
        by_name.setdefault(entry.name, {})[entry.version] = contract_schema(entry.contract)
    return by_name


SNAPSHOT_FILE = re.compile(
    r"(?P<name>[A-Za-z][A-Za-z0-9_-]*\.[A-Za-z][A-Za-z0-9_-]*)\.v(?P<version>[1-9][0-9]{0,8})\.json"
)
"""A snapshot's file of one contract version: ``sales.OrderPlaced.v1.json``."""


def snapshot_file(name: str, version: int) -> str:
    """The file of a contract version's schema in a snapshot folder."""
    return f"{name}.v{version}.json"


def schema_text(schema: dict[str, Any]) -> str:
    """A schema as kept in a snapshot and served: keys sorted, indented, a final newline,
    so that the same schema is the same bytes (diffs show changes, entity tags hold)."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
