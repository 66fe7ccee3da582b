"""A queued command's status, as the status resource shows it and the status bucket
keeps it: ``pending`` from acceptance until a worker has recorded the outcome, then
``done`` (its consistency token and result) or ``failed`` (its problem document).

The context's log is the truth (:mod:`toolkit.commands.outcome`); a status is written
after the log, and a worker that finds an outcome already recorded writes the status
from it. So a status never says done for a command whose events were not stored."""

from __future__ import annotations

from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Literal

import msgspec

State = Literal["pending", "done", "failed"]


class CommandStatus(msgspec.Struct, kw_only=True):
    """One command's status (JSON in the status bucket; its HTTP form is :meth:`public`)."""

    id: str
    context: str
    command: str
    state: State = "pending"
    accepted_at: str
    finished_at: str | None = None
    consistency_token: str | None = None
    """For ``done``: the token of the command's save (``<context>:<log position>``, as the
    synchronous endpoints give it). None when the worker that stored the command stopped
    before writing its status: the one that found it stored cannot know the position."""
    result: Any = None
    """For ``done``: what the handler returned (JSON)."""
    problem: dict[str, Any] | None = None
    """For ``failed``: an RFC 9457 problem document."""
    fingerprint: str = ""
    """The digest of the request (command and body) that created it: a request with the
    same ``Idempotency-Key`` and another body is refused rather than answered with it."""

    @property
    def final(self) -> bool:
        return self.state != "pending"

    def public(self) -> dict[str, Any]:
        """What a client sees: everything but the fingerprint, and for each state only
        the fields it has."""
        shown: dict[str, Any] = {
            "id": self.id,
            "context": self.context,
            "command": self.command,
            "state": self.state,
            "accepted_at": self.accepted_at,
        }
        if self.state == "done":
            shown["finished_at"] = self.finished_at
            shown["consistency_token"] = self.consistency_token
            shown["result"] = self.result
        elif self.state == "failed":
            shown["finished_at"] = self.finished_at
            shown["problem"] = self.problem
        return shown


def now() -> str:
    """The time now, as statuses show it (ISO 8601, UTC, milliseconds)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def problem_document(status: int, detail: str) -> dict[str, Any]:
    """An RFC 9457 problem document, as the HTTP boundary answers errors."""
    return {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }


def encode(status: CommandStatus) -> bytes:
    return msgspec.json.encode(status)


def decode(data: bytes) -> CommandStatus:
    return msgspec.json.decode(data, type=CommandStatus)
