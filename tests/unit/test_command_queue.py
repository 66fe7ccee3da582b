"""The pure parts of commands through a queue: declarations, Idempotency-Keys, command
ids, subjects and statuses (no server: tests/integration/test_command_queue.py runs the
queue itself)."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
import pytest

from contexts.sales import Sales
from contexts.sales.queued import commands as sales_queue
from toolkit import BoundedContext, CommandQueue, PublishedLanguage, System
from toolkit.commands.queue import (
    canonical_id,
    command_id,
    fingerprint,
    idempotency_key,
    stream_name,
    subject,
)
from toolkit.commands.status import CommandStatus, problem_document
from toolkit.errors import ConfigurationError, InvalidCommand, SubjectError


class Strict(msgspec.Struct, forbid_unknown_fields=True):
    count: int


class Lenient(msgspec.Struct):
    count: int


def test_a_declaration_names_its_commands_and_refuses_lenient_or_twice_declared_ones() -> None:
    queue = CommandQueue(Sales)
    queue.command(Strict)(lambda command, sales: None)
    queue.command(Strict, name="count-again")(lambda command, sales: None)
    assert queue.context == "sales" and queue.names == ["strict", "count-again"]
    assert sales_queue.names == ["register-customer", "place-order"]
    with pytest.raises(ConfigurationError, match="forbid_unknown_fields"):
        queue.command(Lenient)
    with pytest.raises(ConfigurationError, match="declared twice"):
        queue.command(Strict)(lambda command, sales: None)
    with pytest.raises(SubjectError, match="invalid command name"):
        queue.command(Strict, name="a.b")
    with pytest.raises(ConfigurationError, match="ack_wait"):
        CommandQueue(Sales, ack_wait=0)
    with pytest.raises(InvalidCommand, match=r"takes no command 'nope' \(it takes: strict"):
        queue.type("nope")


def test_a_command_is_decoded_strictly() -> None:
    queue = CommandQueue(Sales)
    queue.command(Strict)(lambda command, sales: None)
    kind = queue.type("strict")
    assert kind.decode(b'{"count": 2}') == Strict(count=2)
    for body, why in (
        (b'{"count": "2"}', "Expected `int`, got `str`"),
        (b'{"count": 2.5}', "Expected `int`, got `float`"),
        (b'{"count": 2, "more": 1}', "unknown field `more`"),
        (b"{}", "missing required field `count`"),
        (b"[1]", "Expected `object`"),
        (b"{", "not JSON"),
    ):
        with pytest.raises(InvalidCommand, match=why):
            kind.decode(body)


def test_idempotency_keys_are_printable_ascii_and_never_reach_a_subject() -> None:
    assert idempotency_key("abc") == "abc"
    assert idempotency_key(' "8e03978e-40d5-43e8-bc93-6894a57f9324" ') == (
        "8e03978e-40d5-43e8-bc93-6894a57f9324"
    )
    assert idempotency_key("a.*>$%") == "a.*>$%"  # any printable: it is hashed, not used
    for bad in ("", '""', "a b", "x" * 256, "café", '"', 'a"b', "a\x00", "a\tb"):
        with pytest.raises(InvalidCommand, match="Idempotency-Key"):
            idempotency_key(bad)
    one = command_id("sales", "a.*>")
    assert one == command_id("sales", "a.*>") != command_id("billing", "a.*>")
    assert canonical_id(one) == one and uuid.UUID(one).version == 5
    assert command_id("sales", None) != command_id("sales", None)
    assert subject("sales", "register-customer") == "sales_commands.register-customer"
    assert stream_name("sales") == "sales_commands"


def test_only_a_canonical_uuid_is_a_command_id() -> None:
    an_id = str(uuid.uuid4())
    assert canonical_id(an_id) == an_id
    assert canonical_id(an_id.upper()) == an_id
    for other in (an_id.replace("-", ""), f"{{{an_id}}}", "nope", "", an_id + "0", "*", ">"):
        assert canonical_id(other) is None, other


def test_a_fingerprint_tells_commands_and_bodies_apart() -> None:
    assert fingerprint("a", b"{}") == fingerprint("a", b"{}")
    assert len({fingerprint("a", b"{}"), fingerprint("b", b"{}"), fingerprint("a", b"[]")}) == 3


def test_a_status_shows_what_its_state_has() -> None:
    base: dict[str, Any] = {"id": "i", "context": "sales", "command": "c", "accepted_at": "t"}
    pending = CommandStatus(**base, fingerprint="secret")
    assert pending.public() == {**base, "state": "pending"} and not pending.final
    done = CommandStatus(
        **base, state="done", finished_at="u", consistency_token="sales:3", result={"id": 1}
    )
    assert done.public() == {
        **base, "state": "done", "finished_at": "u", "consistency_token": "sales:3",
        "result": {"id": 1},
    }  # fmt: skip
    problem = problem_document(422, "no")
    assert problem == {"type": "about:blank", "title": "Unprocessable Entity", "status": 422,
                       "detail": "no"}  # fmt: skip
    failed = CommandStatus(**base, state="failed", finished_at="u", problem=problem)
    assert failed.public() == {**base, "state": "failed", "finished_at": "u", "problem": problem}
    assert failed.final and "fingerprint" not in failed.public()


class Other(BoundedContext):
    name = "other"
    published_language = PublishedLanguage("other")


def test_a_system_finds_a_context_s_queue_and_checks_it_is_that_context_s() -> None:
    system = System(contexts={"sales": Sales, "other": Other},
                    command_queues={"sales": sales_queue, "other": sales_queue})  # fmt: skip
    assert system.command_queue("sales") is sales_queue
    with pytest.raises(ConfigurationError, match=r"no command queue of context 'x' \(known"):
        system.command_queue("x")
    with pytest.raises(ConfigurationError, match="is sales's"):
        system.command_queue("other")
