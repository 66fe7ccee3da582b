"""One relay per context: a second one is refused at start, with one line naming the first.

Two relays of one context never interleave on its stream (each publish carries
``Nats-Expected-Last-Sequence``), but both would keep going, each refused half the time.
So ``toolkit relay`` and ``toolkit serve`` hold this lock while their relay runs. It has
to go when its holder goes, however it goes (a relay killed by SIGKILL must not keep the
next one out), and it lives with the log the relay reads, since the log is what makes
two relays the same relay:

- A log in a SQLite file: an ``flock`` on ``<log file>.relay-lock``, beside it. The
  kernel releases it with its holder's last descriptor, SIGKILL included; only processes
  of this host can open that log anyway.
- A PostgreSQL log: a session advisory lock in the log's database, taken on a connection
  of its own. The server releases it when the session ends (its holder died or lost the
  connection), and relays on any host see it; the holder is named by the session's
  ``application_name``.
- Any other log (the JetStream log): an ``flock`` on ``<data dir>/<context>.relay-lock``,
  which keeps out the relays of one data folder; relays of one JetStream log on other
  hosts are not refused at start (they still never interleave).

A lock on NATS (a KV entry with a time to live) was not chosen: a holder killed by SIGKILL
would keep every new relay out until its entry expired, and a holder cut off from NATS
for longer than that would lose the lock while it still runs.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from toolkit import locks
from toolkit.errors import RelayBusyError
from toolkit.write.context import BoundedContext


@contextlib.contextmanager
def relay_lock(context: BoundedContext[Any], role: str) -> Iterator[None]:
    """Hold the lock of ``context``'s relay while the block runs; raise
    :class:`~toolkit.errors.RelayBusyError`, naming the holder, when another holds it.
    ``role`` says what runs the relay (``toolkit relay``), for that message."""
    with log_lock(context, "relay", role, lambda holder: _busy(context.name, holder)):
        yield


@contextlib.contextmanager
def log_lock(
    context: BoundedContext[Any], kind: str, role: str, busy: Callable[[str], Exception]
) -> Iterator[None]:
    """Hold the lock ``kind`` of ``context``'s log (``relay``; a policy's, see
    :mod:`toolkit.react.lock`) while the block runs, where this module's docstring says
    it lives: ``<log file>.<kind>-lock``, an advisory lock ``<kind>:<schema>.<context>``,
    or ``<data dir>/<context>.<kind>-lock``. When another holds it, raise what ``busy``
    makes of a description of the holder."""
    datastore = getattr(context.recorder, "datastore", None)
    postgres = sys.modules.get("eventsourcing.postgres")  # imported when the log is there
    if postgres is not None and isinstance(datastore, postgres.PostgresDatastore):
        with _advisory_lock(datastore, f"{kind}:{datastore.schema}.{context.name}", role, busy):
            yield
        return
    log_file = context.log_file
    if log_file is not None:
        path = log_file.with_name(f"{log_file.name}.{kind}-lock")
    else:
        path = context.data_dir / f"{context.name}.{kind}-lock"
    with _file_lock(path, role, busy):
        yield


def _holder(role: str) -> dict[str, Any]:
    return {
        "role": role,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _busy(name: str, holder: str) -> RelayBusyError:
    return RelayBusyError(
        f"a relay of {name} already runs ({holder}); a second one is refused: stop that one first"
    )


@contextlib.contextmanager
def _file_lock(path: Path, role: str, busy: Callable[[str], Exception]) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = orjson.dumps(_holder(role))
    with locks.file_lock(
        path, holder=holder, refused=lambda held: busy(_described(held.written, path))
    ):
        yield


def _described(written: bytes, path: Path) -> str:
    """Who holds a lock file, from what its holder wrote in it."""
    try:
        h = orjson.loads(written)
        return f"{h['role']}, pid {h['pid']} on {h['host']} since {h['since']}"
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return f"the lock {path} is held"


@contextlib.contextmanager
def _advisory_lock(
    datastore: Any, label: str, role: str, busy: Callable[[str], Exception]
) -> Iterator[None]:
    import psycopg

    holder = _holder(role)
    params = {k: v for k, v in (datastore.pool.kwargs or {}).items() if k != "row_factory"}
    described = f"{role}, pid {holder['pid']} on {holder['host']}"
    db = psycopg.connect(
        **params, autocommit=True, connect_timeout=5, application_name=described[:63]
    )
    try:
        if not locks.try_advisory_lock(db, label):
            raise busy(locks.advisory_holder(db, label))
        yield
    finally:
        db.close()  # which releases the lock
