"""The AsyncAPI document of a system (toolkit.wire.asyncapi), checked against the official
AsyncAPI 3.0.0 JSON Schema, and for what that schema cannot say: every ``$ref`` resolves
inside the document, every published contract version has its message, the readers
declared are there, no credentials of the NATS URL leak, and YAML is the same document.

tests/schemas/asyncapi-3.0.0.json is ``schemas/3.0.0-without-$id.json`` of the npm package
``@asyncapi/specs`` 6.11.1 (https://github.com/asyncapi/spec-json-schemas), unchanged:
Apache License 2.0, copyright 2016-2025 AsyncAPI Initiative (see tests/schemas/README.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
import yaml

from contexts.system import system
from toolkit import IntegrationEvent, PublishedLanguage, contract
from toolkit.system import System
from toolkit.wire.asyncapi import asyncapi_document, encoded, message_key, server_entries
from toolkit.wire.schemas import contract_schema, published

pytestmark = pytest.mark.timeout(30)

OFFICIAL = Path(__file__).resolve().parents[1] / "schemas" / "asyncapi-3.0.0.json"
SECRET_URL = "nats://alice:s3cr%40t@nats-1.internal:4222,nats://tok3n@nats-2.internal:4223"


def official() -> jsonschema.Draft7Validator:
    schema = json.loads(OFFICIAL.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def document(of: System = system, servers: str | None = SECRET_URL) -> dict[str, Any]:
    return asyncapi_document(of, servers=servers, title="Example")


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"{ref} points outside the document"
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node


@pytest.mark.parametrize("servers", [SECRET_URL, None, "nats://127.0.0.1:4222"])
def test_the_document_is_valid_asyncapi_3(servers: str | None) -> None:
    errors = [
        f"{error.json_path}: {error.message[:200]}"
        for error in official().iter_errors(document(servers=servers))
    ]
    assert not errors


def test_the_official_schema_does_refuse_a_broken_document() -> None:
    """(So that the test above checks something.)"""
    broken = document()
    broken["operations"]["sales.send"]["action"] = "publish"  # AsyncAPI 2's word
    del broken["channels"]["sales"]["messages"]["OrderPlaced.v1"]["$ref"]
    broken["channels"]["sales"]["messages"]["OrderPlaced.v1"]["payload"] = {"type": 7}
    assert len(list(official().iter_errors(broken))) >= 2


def test_every_reference_resolves_inside_the_document() -> None:
    doc = document()
    found = list(refs(doc))
    assert len(found) > 40
    for ref in found:
        resolve(doc, ref)


def test_every_published_contract_version_has_its_message() -> None:
    doc = document()
    contracts = published(system)
    assert len(contracts) == 10
    for entry in contracts:
        key = message_key(entry)
        channel = doc["channels"][entry.context]
        in_channel = f"{entry.name.partition('.')[2]}.v{entry.version}"
        message = resolve(doc, channel["messages"][in_channel]["$ref"])
        assert message is doc["components"]["messages"][key]
        assert message["name"] == key
        assert message["contentType"] == "application/json"
        fixed = message["payload"]["allOf"][1]["properties"]
        assert fixed["type"] == {"const": entry.name}
        assert fixed["schemaversion"] == {"const": entry.version}
        data = resolve(doc, fixed["data"]["$ref"])
        own = contract_schema(entry.contract)
        assert data["properties"].keys() == own["properties"].keys()
        assert data["required"] == own["required"]
        sent = doc["operations"][f"{entry.context}.send"]
        assert {"$ref": f"#/channels/{entry.context}/messages/{in_channel}"} in sent["messages"]
    assert doc["channels"]["sales"]["address"] == "sales.{aggregatetype}.{aggregateid}.{event}"
    assert doc["channels"]["sales"]["parameters"]["aggregatetype"]["enum"] == [
        "customer",
        "order",
        "product",
    ]
    assert resolve(doc, "#/components/schemas/OrderLine")["properties"]["unit_price"]


def test_projections_and_policies_receive_what_their_translators_read() -> None:
    operations = document()["operations"]

    def reads(key: str) -> list[str]:
        operation = operations[key]
        assert operation["action"] == "receive"
        return sorted(ref["$ref"].rpartition("/")[2] for ref in operation["messages"])

    assert reads("projection.shipping.receive.sales") == ["OrderCancelled.v1", "OrderPlaced.v1"]
    assert reads("policy.ship-orders.receive.sales") == ["OrderCancelled.v1", "OrderPlaced.v1"]
    assert operations["policy.ship-orders.receive.sales"]["channel"] == {"$ref": "#/channels/sales"}
    assert "of shipping" in operations["policy.ship-orders.receive.sales"]["title"]
    assert reads("policy.mark-shipped.receive.shipping") == ["ShipmentDispatched.v1"]
    assert reads("projection.invoices.receive.billing")


def test_no_credentials_of_the_nats_url_reach_the_document() -> None:
    text = encoded(document()).decode() + encoded(document(), yaml=True).decode()
    for secret in ("alice", "s3cr", "tok3n", "%40t"):
        assert secret not in text
    assert server_entries(SECRET_URL) == {
        "nats-1": {"host": "nats-1.internal:4222", "protocol": "nats", "description": "NATS."},
        "nats-2": {"host": "nats-2.internal:4223", "protocol": "nats", "description": "NATS."},
    }
    (only,) = server_entries("tls://u:p@[::1]:4222").values()
    assert only == {"host": "[::1]:4222", "protocol": "nats", "description": "NATS with TLS."}
    assert server_entries(None)["nats"]["host"] == "localhost:{port}"


def test_yaml_and_json_are_the_same_document() -> None:
    doc = document()
    assert json.loads(encoded(doc)) == doc
    assert yaml.safe_load(encoded(doc, yaml=True)) == doc


# -- two contexts each nesting a different struct of one name -----------------------------


class Line(msgspec.Struct, frozen=True):
    sku: str


class Other:
    class Line(msgspec.Struct, frozen=True):
        amount: int


@contract("left.Placed", version=1)
class LeftPlaced(IntegrationEvent, frozen=True, kw_only=True):
    lines: list[Line]


@contract("right.Placed", version=2)
class RightPlaced(IntegrationEvent, frozen=True, kw_only=True):
    lines: list[Other.Line]


class Thing:
    class Happened:
        pass


def _context(name: str, to: type[IntegrationEvent]) -> type:
    language = PublishedLanguage(name)
    language.maps(Thing.Happened, to=to)(lambda event: None)
    return type(name.capitalize(), (), {"published_language": language})


def test_nested_structs_of_one_name_keep_their_own_schemas() -> None:
    contexts = {"left": _context("left", LeftPlaced), "right": _context("right", RightPlaced)}
    doc = document(System(contexts=contexts))
    assert not list(official().iter_errors(doc))
    schemas = doc["components"]["schemas"]
    left = resolve(doc, schemas["left.Placed.v1"]["properties"]["lines"]["items"]["$ref"])
    right = resolve(doc, schemas["right.Placed.v2"]["properties"]["lines"]["items"]["$ref"])
    assert list(left["properties"]) == ["sku"]
    assert list(right["properties"]) == ["amount"]
    assert doc["channels"]["right"]["parameters"]["aggregatetype"]["enum"] == ["thing"]
    assert list(doc["operations"]) == ["left.send", "right.send"]
