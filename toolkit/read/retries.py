"""Retries: what a projector does when a batch cannot be applied.

A failure with nothing to blame but the surroundings (the read model's database
unreachable, a full disk: :class:`~toolkit.errors.BatchFailure`) is retried with
back-off for as long as it lasts. A message that fails on its own
(:class:`~toolkit.errors.PoisonMessage`) is retried ``Projection.retries`` times with
doubling back-off, then parked in the dead letters (with the rest of its aggregate when
the projection parks aggregates: :mod:`toolkit.read.parking`) and the batch goes on.
Meanwhile the read model records why the projection is failing, for ``status``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from toolkit import backoff
from toolkit.errors import BatchFailure, PoisonMessage
from toolkit.read.batches import BatchResult
from toolkit.read.projection import Projection
from toolkit.read.reader import StreamMessage
from toolkit.read.store import ReadModelStore

log = logging.getLogger(__name__)


class Tally(Protocol):
    """Where the retries and the parked messages are counted (a projector's stats)."""

    retries: int
    parked: int


async def apply_retrying(
    attempt: Callable[[], Awaitable[BatchResult | None]],
    batch: Sequence[StreamMessage],
    *,
    projection: Projection,
    store: ReadModelStore,
    tally: Tally,
    stop: asyncio.Event,
) -> BatchResult | None:
    """Apply ``batch`` with ``attempt`` until it is applied, retrying and parking as the
    projection says; None when ``stop`` is set while waiting to retry."""
    attempts: dict[int, int] = {}
    failures = 0
    while True:
        try:
            result = await attempt()
            store.note_failing(None)
            return result
        except BatchFailure as failure:
            # Nothing to blame but the surroundings: say so, and keep trying.
            store.note_failing(str(failure))
            failures += 1
            delay = backoff.delay_after(failures, projection.retry_delay, 5.0)
            tally.retries += 1
            log.warning("%s; retrying in %.1fs", failure, delay)
            await backoff.pause(stop, delay)
            if stop.is_set():
                return None
        except PoisonMessage as poison:
            tries = attempts[poison.sequence] = attempts.get(poison.sequence, 0) + 1
            store.note_failing(str(poison))
            if tries <= projection.retries:
                delay = backoff.delay_after(tries, projection.retry_delay, math.inf)
                tally.retries += 1
                log.warning("%s; retry %d in %.1fs", poison, tries, delay)
                await backoff.pause(stop, delay)
                if stop.is_set():
                    return None
                continue
            message = next(m for m in batch if m.sequence == poison.sequence)
            whole = projection.on_poison == "park-aggregate"
            cause = poison.cause
            store.park(
                message, f"{type(cause).__name__}: {cause} (failed {tries} times)", aggregate=whole
            )
            tally.parked += 1
            log.error(
                "%s; parked %s in the dead letters%s",
                poison,
                f"{poison.stream} sequence {poison.sequence}",
                " with the rest of its aggregate" if whole else "",
            )
