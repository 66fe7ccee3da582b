"""JSON Schema of each contract version: the published language as an open document.

A contract is a Python class; a team writing another language reads its JSON Schema
instead. msgspec generates it from the Struct, so the schema says what the encoder writes
and the decoder takes (decimals as strings, UUIDs canonical, datetimes RFC 3339), and
nothing is kept by hand beside the class. A schema is self-contained: the structs a
contract nests are under ``$defs`` of its own document.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

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
    (ref,), components = msgspec.json.schema_components((cls,), ref_template=f"#/{defs}/{{name}}")
    own = ref["$ref"].rpartition("/")[2]
    schema: dict[str, Any] = {"$schema": DIALECT, **components.pop(own)}
    schema["title"] = f"{name} v{version}"
    schema["description"] = (cls.__doc__ or "").strip() or f"Contract {name}, version {version}."
    if components:
        schema[defs] = components
    return schema


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
