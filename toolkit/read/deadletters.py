"""A projection's dead letters: listed, retried with the code as it is now, or dropped.

A dead letter is a message the projection could not apply (it kept failing, could not be
read, or was parked behind its aggregate's dead letter: :mod:`toolkit.read.parking`);
its row, with the reason, is in the read model's own tables
(:mod:`toolkit.readmodels.tables`). Listing reads them on any connection, also while
the projection runs; retrying (here) and dropping
(:meth:`~toolkit.read.store.ReadModelStore.drop_dead_letter`) change the read model, so
they take its writer's place (``toolkit dlq``).
"""

from __future__ import annotations

from collections.abc import Sequence

from toolkit import wire
from toolkit.errors import ContractError
from toolkit.read.reader import StreamMessage
from toolkit.read.store import ReadModelStore
from toolkit.read.translator import Translator, UnknownEvent
from toolkit.readmodels.tables import DeadLetter
from toolkit.readmodels.tables import dead_letters as read_dead_letters
from toolkit.wire.subjects import aggregate_token

__all__ = ["DeadLetter", "read_dead_letters", "retry_dead_letters"]


def retry_dead_letters(
    store: ReadModelStore,
    translators: Sequence[Translator],
    only: set[tuple[str, int]] | None = None,
) -> tuple[int, list[DeadLetter]]:
    """Apply dead letters (``only`` those at these (stream, sequence), when given) again,
    oldest first, with the code as it is now; each one that succeeds leaves the dead
    letters (and unparks its aggregate when it was what held it). Returns how many
    succeeded and the ones that failed again, each with its new reason."""
    by_stream = {t.stream: t for t in translators}
    done, failed = 0, []
    for letter in store.dead_letters():
        if only is not None and (letter.stream, letter.sequence) not in only:
            continue
        translator = by_stream.get(letter.stream)
        if translator is None:
            failed.append(letter._replace(reason=f"{letter.stream} is not read any more"))
            continue
        root = store.parking.holding(letter.stream, aggregate_token(letter.subject))
        if root is not None and root != letter.sequence:
            # Its aggregate's order: not before the message that holds it parked.
            failed.append(letter._replace(reason=f"still parked behind sequence {root}"))
            continue
        try:
            store.settle_dead_letter(letter.stream, letter.sequence, _translate(letter, translator))
        except Exception as exc:
            failed.append(letter._replace(reason=f"{type(exc).__name__}: {exc}"))
            continue
        done += 1
    return done, failed


def _translate(letter: DeadLetter, translator: Translator) -> list[object]:
    """The facts a dead letter means now (none for an event type not read)."""
    head = wire.relayed_head(letter.stream, letter.headers.get(wire.MSG_ID), letter.body)
    if isinstance(head, str):
        raise ContractError(
            f"not published by the {letter.stream} relay: {head} (drop it: it is never applied)"
        )
    message = StreamMessage(
        letter.stream, letter.sequence, letter.subject, letter.headers, letter.body
    )
    try:
        return translator.translate(message, head)
    except UnknownEvent:
        return []
