"""A policy's dead letters retried with the code as it is now, or dropped (``toolkit dlq``
on a policy's name).

Retrying reacts to a parked dead letter again through the policy's runner, exactly once:
the message's effects are stored with a tracking record of that message's own
(:meth:`~toolkit.react.runner.PolicyRunner.retry`), then the dead letter is removed. A
crash between the two leaves the dead letter, and its next retry finds the tracking
record and only removes it. Dead letters go oldest first, so an aggregate parked behind
one is retried in its order: the one that holds it, then those held behind it; one that
fails again holds its aggregate from there (those after it stay parked behind it).

A rejection is not retried: it is either a command the context refused
(:class:`~toolkit.errors.InvalidCommand`: the context's answer to that message, which
a retry would only ask again; nothing transient is ever a rejection: a failure that may
pass, any other exception or a log that fails, is retried and parked instead) or a
message the stream's relay did not publish, which is never reacted to. Both can be
dropped. A retried message a command now refuses becomes a rejection.

Both change the policy's dead letters: the caller holds the policy's lock
(:mod:`toolkit.react.lock`), so no reactor of the policy runs meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from toolkit.errors import PoisonMessage
from toolkit.react.deadletters import DeadLetter, PolicyDeadLetters
from toolkit.react.runner import PolicyRunner
from toolkit.wire.subjects import aggregate_token


@dataclass
class Retries:
    """What a retry of dead letters did."""

    reacted: int = 0
    """Dead letters reacted to now (or by an earlier retry that crashed before removing
    them), and removed."""
    events: int = 0
    """Events of the context those reactions stored."""
    rejected: list[DeadLetter] = field(default_factory=list)
    """Dead letters a command refused now: kept as rejections, with the new reason."""
    failed: list[DeadLetter] = field(default_factory=list)
    """Dead letters still failing (or still parked behind one), with the reason."""
    not_retried: list[DeadLetter] = field(default_factory=list)
    """Rejections asked for by sequence: they are dropped, not retried."""


def retry_dead_letters(
    runner: PolicyRunner[Any],
    dead_letters: PolicyDeadLetters,
    only: set[tuple[str, int]] | None = None,
) -> Retries:
    """React again to the parked dead letters (``only`` those at these (stream, sequence),
    when given), oldest first; rejections are left as they are."""
    done = Retries()
    for letter in dead_letters.letters():
        if only is not None and (letter.stream, letter.sequence) not in only:
            continue
        if letter.kind == "rejected":
            if only is not None:
                done.not_retried.append(letter)
            continue
        if letter.stream not in runner.policy.streams:
            done.failed.append(letter._replace(reason=f"{letter.stream} is not read any more"))
            continue
        root = dead_letters.holding(letter.stream, aggregate_token(letter.subject))
        if root is not None and root != letter.sequence:
            done.failed.append(letter._replace(reason=f"still parked behind sequence {root}"))
            continue
        try:
            retried = runner.retry(letter.message())
        except PoisonMessage as poison:
            reason = f"{type(poison.cause).__name__}: {poison.cause}"
            dead_letters.failed_again(letter, reason)
            done.failed.append(letter._replace(reason=reason))
            continue
        if retried.outcome == "rejected":
            dead_letters.rejected_now(letter.stream, letter.sequence, retried.reason)
            done.rejected.append(letter._replace(kind="rejected", reason=retried.reason))
            continue
        dead_letters.settle(letter.stream, letter.sequence)
        done.reacted += 1
        done.events += retried.events
    return done
