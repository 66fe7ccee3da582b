"""The AsyncAPI document as ``toolkit serve`` answers it and ``toolkit contracts asyncapi``
prints it: JSON and YAML the same valid document, cacheable, naming the API's NATS server
without its credentials; and the messages the relay really puts on a stream valid against
their message's payload and headers in it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from contexts.system import system
from tests.conftest import eventually, serving
from tests.unit.test_asyncapi import official
from toolkit.config import Settings
from toolkit.http.app import create_app
from toolkit.nats.connection import connect
from toolkit.nats.embedded import EmbeddedServer

pytestmark = pytest.mark.timeout(90)

USER, PASSWORD = "alice", "s3cret"
ROOT = Path(__file__).resolve().parents[2]


def with_credentials(url: str) -> str:
    """The embedded server's URL with a user and password in it (it has no accounts, so
    it lets them in): what must not reach the document."""
    return url.replace("nats://", f"nats://{USER}:{PASSWORD}@", 1)


def validator(document: dict[str, Any], pointer: str) -> jsonschema.Draft7Validator:
    """A validator of the schema at ``pointer`` of ``document``, its references resolved
    against the document (where AsyncAPI resolves them)."""
    uri = "urn:asyncapi"
    registry: Registry[Any] = Registry().with_resource(
        uri, Resource.from_contents(document, default_specification=DRAFT7)
    )
    return jsonschema.Draft7Validator(
        {"$ref": f"{uri}#{pointer}"},
        registry=registry,
        format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER,
    )


def errors(document: dict[str, Any], pointer: str, instance: object) -> list[str]:
    found = validator(document, pointer).iter_errors(instance)
    return [f"{e.json_path}: {e.message[:200]}" for e in found]


async def test_serve_answers_the_document_and_real_messages_match_it(
    nats_server: EmbeddedServer, data_dir: Path
) -> None:
    settings = Settings(nats_url=with_credentials(nats_server.url), data_dir=data_dir)
    async with (
        serving(create_app(system, settings)) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
    ):
        as_json = await http.get("/asyncapi.json")
        as_yaml = await http.get("/asyncapi.yaml")
        for answer, media_type in ((as_json, "application/json"), (as_yaml, "application/yaml")):
            assert answer.status_code == 200, answer.text
            assert answer.headers["content-type"].startswith(media_type)
            assert answer.headers["cache-control"] == "no-cache"
            assert USER not in answer.text and PASSWORD not in answer.text
            again = await http.get(
                answer.url.path, headers={"If-None-Match": answer.headers["etag"]}
            )
            assert again.status_code == 304 and again.content == b""
        assert as_json.headers["etag"] != as_yaml.headers["etag"]
        document = as_json.json()
        assert yaml.safe_load(as_yaml.text) == document
        assert not list(official().iter_errors(document))
        host = nats_server.url.removeprefix("nats://")
        assert document["servers"] == {
            "nats": {"host": host, "protocol": "nats", "description": "NATS."}
        }
        assert document["info"]["title"] == "Sales, shipping and billing"
        assert (await http.get("/asyncapi.json?x=1")).status_code == 400

        customer = await http.post("/sales/customers", json={"name": "Ann", "email": "a@x.org"})
        line = {"sku": "tea.green/1", "quantity": 2, "unit_price": "2.50"}
        order = await http.post(
            "/sales/orders", json={"customer_id": customer.json()["id"], "lines": [line]}
        )
        assert order.status_code == 201, order.text
        client = await connect(nats_server.url)
        try:
            js = client.jetstream()

            async def relayed() -> int | None:
                state = (await js.stream_info("sales")).state
                return state.messages if state.messages >= 2 else None

            count = await eventually(relayed)
            seen = []
            for sequence in range(1, count + 1):
                message = await js.get_msg("sales", sequence)
                body = json.loads(message.data or b"")
                key = f"{body['type']}.v{body['schemaversion']}"
                assert key in document["components"]["messages"], key
                pointer = f"/components/messages/{key}"
                assert not errors(document, f"{pointer}/payload", body)
                assert not errors(document, f"{pointer}/headers", dict(message.headers or {}))
                seen.append(key)
                context, aggregate, _, event = (message.subject or "").split(".")
                parameters = document["channels"][context]["parameters"]
                assert aggregate in parameters["aggregatetype"]["enum"]
                assert event in parameters["event"]["enum"]
                sent = set(message.headers or {})
                after_rest = {  # the tail check riding on a first publish after a rest
                    "Nats-Expected-Last-Subject-Sequence",
                    "Nats-Expected-Last-Subject-Sequence-Subject",
                }
                assert sent - after_rest == {
                    "Nats-Msg-Id",
                    "Nats-Expected-Last-Sequence",
                    *(["Nats-Expected-Last-Msg-Id"] if sequence > 1 else []),
                }
                assert not sent & after_rest or after_rest <= sent
            assert seen == ["sales.CustomerRegistered.v1", "sales.OrderPlaced.v1"]
            # what it refuses: another contract's data, another type's version
            placed = json.loads((await js.get_msg("sales", 2)).data or b"")
            wrong = {**placed, "data": {**placed["data"], "total": 5}}
            assert errors(document, "/components/messages/sales.OrderPlaced.v1/payload", wrong)
            other = {**placed, "type": "sales.OrderCancelled"}
            assert errors(document, "/components/messages/sales.OrderPlaced.v1/payload", other)
        finally:
            await client.close()


def toolkit(*args: str, cwd: Path, nats_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NATS_URL": nats_url}
    return subprocess.run(
        [sys.executable, "-m", "toolkit", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=cwd,
    )


def test_the_cli_prints_the_document_as_served(tmp_path: Path) -> None:
    url = "nats://bob:pa55word@nats.example.org:4222"
    printed = toolkit("contracts", "asyncapi", cwd=tmp_path, nats_url=url)
    assert printed.returncode == 0, printed.stderr
    assert "bob" not in printed.stdout and "pa55word" not in printed.stdout
    document = json.loads(printed.stdout)
    assert not list(official().iter_errors(document))
    assert document["servers"]["nats"]["host"] == "nats.example.org:4222"
    written = toolkit(
        "contracts", "asyncapi", "--yaml", "-o", "doc.yaml", cwd=tmp_path, nats_url=url
    )
    assert written.returncode == 0, written.stderr
    assert written.stdout == ""
    assert yaml.safe_load((tmp_path / "doc.yaml").read_text()) == document
    helped = toolkit("contracts", "asyncapi", "--help", cwd=tmp_path, nats_url=url)
    assert "usage: toolkit contracts asyncapi" in helped.stdout
