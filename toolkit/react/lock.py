"""One reactor per policy: a second one is refused at start, with one line naming the first.

Two reactors of one policy would not cause an effect twice (the tracking record of each
message is written with its effects, and the second writer's is refused), but both would
keep going, each refused half the time, and each parking into dead letters the other
does not know of. So ``toolkit react``, ``toolkit serve --policies`` and the changes of
``toolkit dlq`` to a policy's dead letters hold this lock. It lives with the log of the
policy's context, as the relay's lock does (:func:`toolkit.write.relay_lock.log_lock`):
``<log file>.policy-<name>-lock`` beside a SQLite log, an advisory lock in a PostgreSQL
log's database (reactors on any host see it), else ``<data dir>/<context>.policy-<name>-lock``.
It goes with its holder, however that ends (SIGKILL included).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from toolkit.errors import PolicyBusyError
from toolkit.wire import check_name
from toolkit.write.context import BoundedContext
from toolkit.write.relay_lock import log_lock


@contextlib.contextmanager
def policy_lock(
    context: BoundedContext[Any], policy: str, role: str, *, shared: bool = False
) -> Iterator[None]:
    """Hold the lock of ``policy`` (running on ``context``) while the block runs; raise
    :class:`~toolkit.errors.PolicyBusyError`, naming the holder, when another holds it.
    ``role`` says what holds it (``toolkit react parcels``), for that message.
    ``shared``: the workers of a policy cut into slices hold it together, which keeps out
    what needs the policy alone (``toolkit dlq``)."""
    kind = f"policy-{check_name('policy', policy)}"
    with log_lock(context, kind, role, busy(policy), shared=shared):
        yield


def busy(policy: str, *, standby_hint: bool = False) -> Callable[[str], PolicyBusyError]:
    """What refuses a second reactor of ``policy``, given who holds its lock (telling
    ``toolkit react`` of its ``--standby``)."""
    hint = " (or start it with --standby)" if standby_hint else ""

    def refused(holder: str) -> PolicyBusyError:
        return PolicyBusyError(
            f"policy {policy} already runs ({holder}); a second one is refused: stop that one "
            f"first{hint}"
        )

    return refused
