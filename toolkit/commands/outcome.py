"""A queued command's outcome, recorded in its context's log in the same transaction as
the command's events: the record that makes each command run once.

Why an aggregate and not a tracking record. Competing workers take commands in any
order, so a position (eventsourcing's ``max_tracking_id``, one row per upstream name that
only grows) cannot say which commands were run; a tracking name per command could, but
only on a context whose log is a process recorder, and it could not say how the command
ended. An aggregate whose id is derived from the command's id can be created once on
every log: SQLite and PostgreSQL refuse a second version 1 by their unique key, the
JetStream log by the expected last sequence of a new subject (0). So a second worker
running the same command (a redelivery after a worker was killed between its save and
its acknowledgement, or a duplicate message) stores nothing, and finds the outcome, with
its result or problem, when it looks. It is private: no published language maps it.
"""

from __future__ import annotations

from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

NAMESPACE = UUID("6f0c1d2e-8a4b-5c3d-9e7f-0a1b2c3d4e5f")
"""The namespace of outcome ids (uuid5)."""


def outcome_id(context: str, command_id: str) -> UUID:
    """The id of the outcome of command ``command_id`` of ``context``."""
    return uuid5(NAMESPACE, f"{context}/commands/{command_id}")


class CommandOutcome(Aggregate):
    """How a queued command ended: ``done`` with its result (JSON text), or ``failed``
    with its problem document (JSON text)."""

    class Recorded(Aggregate.Created):
        command_id: str
        command: str
        state: str
        result: str | None
        problem: str | None

    @event(Recorded)
    def __init__(
        self, command_id: str, command: str, state: str, result: str | None, problem: str | None
    ) -> None:
        self.command_id = command_id
        self.command = command
        self.state = state
        self.result = result
        self.problem = problem

    @classmethod
    def of(
        cls,
        context: str,
        command_id: str,
        command: str,
        *,
        result: str | None = None,
        problem: str | None = None,
    ) -> CommandOutcome:
        """The outcome of a command: done with ``result``, or failed with ``problem``."""
        state = "failed" if problem is not None else "done"
        return cls._create(
            cls.Recorded,
            id=outcome_id(context, command_id),
            command_id=command_id,
            command=command,
            state=state,
            result=result,
            problem=problem,
        )
