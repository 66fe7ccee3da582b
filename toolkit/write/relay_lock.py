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
  which keeps out the relays of one data folder, and, since relays on other hosts read
  that log too, a lease on NATS (``relay.<context>`` in the leases' bucket, see
  :mod:`toolkit.nats.leases`), taken once the ``flock`` is, and kept while renewed.

The lease on NATS is for that case only: a holder killed by SIGKILL keeps the others out
until its entry expires (``TOOLKIT_LEASE_TTL``, 6 s), where the locks above go the moment
their holder does; and a holder cut off from NATS for longer loses it while it still
runs (it stops relaying: ``lease.lost``).

Standbys (:func:`relay_lease`, ``toolkit relay <context> --standby``): since the locks
go with their holder however it dies, a relay that waits for the lock (polling it with a
short pause, so that SIGTERM stops the wait at once; on PostgreSQL on one session of its
own, reconnecting while the server is away) takes over the moment the holder stops or
dies, and relays from where the stream ends (on a JetStream log, once the holder's lease
on NATS is gone too). A holder can lose its lock while it runs on PostgreSQL (its
session ended: a server restart, a cut connection) or its lease on NATS: the lease
checks its session every second, takes the lock again on a new one if nobody else has,
and otherwise says the lock is lost, and the relay stops. What the old holder published
in the moment before it noticed is fenced by the stream, not by the lock: every publish
carries ``Nats-Expected-Last-Sequence`` and the id of the message before it, so
JetStream refuses whatever does not follow the stream's last message, and drops a
message id it has already stored (see :mod:`toolkit.write.relay`); the old holder can
write nothing out of order or twice, and starts over from the stream's tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from toolkit import locks
from toolkit.backoff import Backoff, cancel_and_wait, first, pause
from toolkit.errors import RelayBusyError
from toolkit.nats.connection import Connection
from toolkit.nats.leases import DEFAULT_TTL, LeaseGroup
from toolkit.write.context import BoundedContext

log = logging.getLogger("toolkit.write.relay")  # told where the relay runs


@contextlib.contextmanager
def relay_lock(context: BoundedContext[Any], role: str) -> Iterator[None]:
    """Hold the lock of ``context``'s relay while the block runs; raise
    :class:`~toolkit.errors.RelayBusyError`, naming the holder, when another holds it.
    ``role`` says what runs the relay (``toolkit relay``), for that message."""
    with log_lock(context, "relay", role, lambda holder: _busy(context.name, holder)):
        yield


@contextlib.contextmanager
def log_lock(
    context: BoundedContext[Any],
    kind: str,
    role: str,
    busy: Callable[[str], Exception],
    *,
    shared: bool = False,
) -> Iterator[None]:
    """Hold the lock ``kind`` of ``context``'s log (``relay``; a policy's, see
    :mod:`toolkit.react.lock`) while the block runs, where this module's docstring says
    it lives: ``<log file>.<kind>-lock``, an advisory lock ``<kind>:<schema>.<context>``,
    or ``<data dir>/<context>.<kind>-lock``. When another holds it, raise what ``busy``
    makes of a description of the holder. ``shared``: with any number of other shared
    holders (the workers of a policy cut into slices), keeping the exclusive ones out."""
    where = _where(context, kind)
    if isinstance(where, Path):
        with _file_lock(where, role, busy, shared=shared):
            yield
    else:
        with _advisory_lock(*where, role, busy, shared=shared):
            yield


def _where(context: BoundedContext[Any], kind: str) -> Path | tuple[Any, str]:
    """The lock file of ``context``'s lock ``kind``, or its log's PostgreSQL datastore and
    the label of its advisory lock."""
    datastore = getattr(context.recorder, "datastore", None)
    postgres = sys.modules.get("eventsourcing.postgres")  # imported when the log is there
    if postgres is not None and isinstance(datastore, postgres.PostgresDatastore):
        return datastore, f"{kind}:{datastore.schema}.{context.name}"
    log_file = context.log_file
    if log_file is not None:
        return log_file.with_name(f"{log_file.name}.{kind}-lock")
    return context.data_dir / f"{context.name}.{kind}-lock"


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
def _file_lock(
    path: Path, role: str, busy: Callable[[str], Exception], *, shared: bool = False
) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = None if shared else orjson.dumps(_holder(role))
    with locks.file_lock(
        path,
        shared=shared,
        holder=holder,
        refused=lambda held: busy(_described(held.written, path)),
    ) as fd:
        if shared:
            os.ftruncate(fd, 0)  # (what an exclusive holder gone wrote: not who holds it)
        yield


def _described(written: bytes, path: Path) -> str:
    """Who holds a lock file, from what its holder wrote in it."""
    if not written:
        return "held shared by its workers"
    try:
        h = orjson.loads(written)
        return f"{h['role']}, pid {h['pid']} on {h['host']} since {h['since']}"
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return f"the lock {path} is held"


@contextlib.contextmanager
def _advisory_lock(
    datastore: Any, label: str, role: str, busy: Callable[[str], Exception], *, shared: bool = False
) -> Iterator[None]:
    db = _connect(datastore, role)
    try:
        if not locks.try_advisory_lock(db, label, shared=shared):
            raise busy(locks.advisory_holder(db, label))
        yield
    finally:
        db.close()  # which releases the lock


KEEPALIVE = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 1,
    "keepalives_count": 3,
    "tcp_user_timeout": 5000,
}
"""libpq's TCP settings of a lock session. A server that vanished without a FIN (its
host lost, a network cut) is otherwise noticed only after the kernel's retransmissions
(a quarter of an hour) or keepalives (two hours by default), and the session check of
:func:`_watch` blocks meanwhile: with these, an idle session is probed after 5 s, and
one whose probes or check go unanswered fails within about 5 s more
(``tcp_user_timeout``, in milliseconds), so the holder notices within seconds. The
server's side needs nothing: it ends the session, and releases the lock, by its own
keepalives or once the host is back."""


def _connect(datastore: Any, role: str) -> Any:
    """A session of its own in the log's database, named after its holder, with
    :data:`KEEPALIVE`."""
    import psycopg

    holder = _holder(role)
    params = {k: v for k, v in (datastore.pool.kwargs or {}).items() if k != "row_factory"}
    described = f"{role}, pid {holder['pid']} on {holder['host']}"
    return psycopg.connect(
        **(KEEPALIVE | params),  # (the log's own settings win)
        autocommit=True,
        connect_timeout=5,
        application_name=described[:63],
    )


WAIT_PAUSE = 0.2
"""Seconds between two looks at a lock a standby waits for: how soon it takes over."""
CHECK_EVERY = 1.0
"""Seconds between two checks that a PostgreSQL lock's session still holds it."""


@dataclass
class RelayLease:
    """The relay lock, held by this process until the block of :func:`relay_lease` ends,
    or until :attr:`lost` is set: another process took it (possible on PostgreSQL only,
    once this one's session ended). The relay stops then; :attr:`holder` says who."""

    lost: asyncio.Event = field(default_factory=asyncio.Event)
    holder: str = ""
    waited: bool = False
    """Whether another held the lock when this one asked for it (this one took over)."""


@contextlib.asynccontextmanager
async def relay_lease(
    context: BoundedContext[Any],
    role: str,
    stop: asyncio.Event,
    *,
    standby: bool = False,
    waiting: Callable[[str], None] = lambda _: None,
    nats: Connection | None = None,
    ttl: float = DEFAULT_TTL,
    kind: str = "relay",
    busy: Callable[[str], Exception] | None = None,
    replicas: int = 1,
) -> AsyncIterator[RelayLease | None]:
    """Hold the lock of ``context``'s relay while the block runs. Held by another: without
    ``standby``, raise :class:`~toolkit.errors.RelayBusyError` at once (as
    :func:`relay_lock`); with it, call ``waiting`` once with a description of the holder
    and wait until the lock is free, then take it. Yields None when ``stop`` is set
    while waiting. On PostgreSQL the lease's session is checked every
    :data:`CHECK_EVERY` seconds: see this module's docstring for what happens when it ends.

    Another lock of the log (``kind``: a policy's, ``policy-<name>``, see
    :mod:`toolkit.react.lock`) is leased the same way, refused with what ``busy`` makes
    of the holder's description."""
    lease = RelayLease()
    where = _where(context, kind)
    refuse = busy or (lambda holder: _busy(context.name, holder))
    if isinstance(where, Path):
        stack = await _wait_for_file(where, role, refuse, stop, standby, waiting, lease)
        if stack is None:
            yield None
            return
        with stack:
            if nats is None or context.log_file is not None:
                yield lease
                return
            # A JetStream log: relays of other hosts (other data folders) read it too.
            group = f"{kind}.{context.name}"
            async with _nats_lease(
                nats, group, refuse, stop, standby, waiting, lease, ttl, replicas
            ) as held:
                yield lease if held else None
        return
    datastore, label = where
    db = await _wait_for_advisory(
        datastore, label, role, context.name, refuse, stop, standby, waiting, lease
    )
    if db is None:
        yield None
        return
    session = [db]
    watch = asyncio.create_task(_watch(session, datastore, label, role, context.name, lease))
    try:
        yield lease
    finally:
        await cancel_and_wait(watch)
        for db in session:
            await asyncio.to_thread(db.close)  # which releases the lock


@contextlib.asynccontextmanager
async def _nats_lease(
    connection: Connection,
    name: str,
    refuse: Callable[[str], Exception],
    stop: asyncio.Event,
    standby: bool,
    waiting: Callable[[str], None],
    lease: RelayLease,
    ttl: float,
    replicas: int,
) -> AsyncIterator[bool]:
    """The relay's lease on NATS (``relay.<context>`` in the leases' bucket, or a
    policy's, ``policy-<name>.<context>``: see
    :mod:`toolkit.nats.leases`), for a log that relays on other hosts read too: taken when
    free, kept until this relay stops, lost when not renewed in time (``lease.lost`` is
    set then: the stream fences what the relay publishes meanwhile). Yields whether it is
    held (False: ``stop`` was set while standing by)."""
    group = LeaseGroup(connection, name, 1, ttl=ttl, replicas=replicas, sticky=True)
    ended = asyncio.Event()
    running = asyncio.create_task(group.run(ended))
    watching: asyncio.Task[None] | None = None
    # Without ``standby``, a lease still held is waited for until it would have expired:
    # a holder that died (SIGKILL) keeps it that long, one alive renews it.
    refuse_after = asyncio.get_running_loop().time() + ttl * 1.5
    try:
        while 0 not in group.held:
            await first(group.ready.wait(), stop.wait())
            if stop.is_set():
                break
            if 0 in group.held:
                break
            holder = (await group.holders())[0].holder
            described = (
                f"pid {holder.pid} on {holder.host} since {holder.since}" if holder else "expiring"
            )
            if not standby and asyncio.get_running_loop().time() > refuse_after:
                raise refuse(f"its lease on NATS is held: {described}")
            if not standby:
                group.changed.clear()
                await first(group.changed.wait(), stop.wait(), asyncio.sleep(ttl / 3))
                continue
            if not lease.waited:
                waiting(f"its lease on NATS is held: {described}")
                lease.waited = True
            group.changed.clear()
            await first(group.changed.wait(), stop.wait())
        if 0 not in group.held:
            yield False
            return

        async def watch() -> None:
            while 0 in group.held and group.holds(0):
                group.changed.clear()
                await first(group.changed.wait(), asyncio.sleep(ttl / 4))
            lease.holder = "another relay (its lease on NATS was not renewed in time)"
            lease.lost.set()

        watching = asyncio.create_task(watch())
        yield True
    finally:
        if watching is not None:
            watching.cancel()
        ended.set()
        await running


class _Held(Exception):
    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


async def _wait_for_file(
    path: Path,
    role: str,
    refuse: Callable[[str], Exception],
    stop: asyncio.Event,
    standby: bool,
    waiting: Callable[[str], None],
    lease: RelayLease,
) -> contextlib.ExitStack | None:
    """The lock file's ``flock``, taken (held until the stack closes), polled with
    ``LOCK_NB`` while another holds it: a blocking ``flock`` would not hear SIGTERM."""
    while True:
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(_file_lock(path, role, _Held))
            return stack
        except _Held as held:
            if not standby:
                raise refuse(held.holder) from None
            if not lease.waited:
                waiting(held.holder)
                lease.waited = True
        if await pause(stop, WAIT_PAUSE):
            return None


async def _wait_for_advisory(
    datastore: Any,
    label: str,
    role: str,
    name: str,
    refuse: Callable[[str], Exception],
    stop: asyncio.Event,
    standby: bool,
    waiting: Callable[[str], None],
    lease: RelayLease,
) -> Any:
    """A session holding the advisory lock ``label``, or None once ``stop`` is set. A
    standby keeps one session while it waits, asking with ``pg_try_advisory_lock``
    (``pg_advisory_lock`` would block where SIGTERM is not heard), and connects again,
    with back-off, while the server is away."""
    import psycopg

    retrying = Backoff(WAIT_PAUSE, 5.0)
    db: Any = None
    while True:
        try:
            if db is None:
                db = await asyncio.to_thread(_connect, datastore, role)
            if await asyncio.to_thread(locks.try_advisory_lock, db, label):
                return db
            holder = await asyncio.to_thread(locks.advisory_holder, db, label)
            if not standby:
                await asyncio.to_thread(db.close)
                raise refuse(holder)
            if not lease.waited:
                waiting(holder)
                lease.waited = True
            retrying.reset()
            delay = WAIT_PAUSE
        except psycopg.OperationalError as exc:
            if db is not None:
                await asyncio.to_thread(db.close)
                db = None
            if not standby:
                raise
            delay = retrying.advance()
            log.warning(
                "relay %s: standing by, but its PostgreSQL log does not answer (%s); "
                "trying again in %.1fs", name, " ".join(str(exc).split()), delay,
            )  # fmt: skip
        if await pause(stop, delay):
            if db is not None:
                await asyncio.to_thread(db.close)
            return None


async def _watch(
    session: list[Any], datastore: Any, label: str, role: str, name: str, lease: RelayLease
) -> None:
    """Check every second that the lease's session is alive (its lock lives with it).
    Once it has ended, take the lock again on a new session if nobody else has it
    (retrying while the server is away: meanwhile the stream fences the relay); set
    ``lease.lost`` once another process holds it."""
    import psycopg

    retrying = Backoff(WAIT_PAUSE, 5.0)
    alive = True
    while True:
        await asyncio.sleep(CHECK_EVERY if alive else retrying.advance())
        try:
            if alive:
                await asyncio.to_thread(session[0].execute, "SELECT 1")
                continue
            db = await asyncio.to_thread(_connect, datastore, role)
            if await asyncio.to_thread(locks.try_advisory_lock, db, label):
                session[0] = db
                alive = True
                retrying.reset()
                log.warning("relay %s: its lock's PostgreSQL session had ended; took the lock "
                            "again on a new one", name)  # fmt: skip
                continue
            lease.holder = await asyncio.to_thread(locks.advisory_holder, db, label)
            session.append(db)  # closed with the lease
            lease.lost.set()
            return
        except psycopg.Error as exc:
            if alive:
                alive = False
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(session[0].close)
                log.warning("relay %s: its lock's PostgreSQL session ended (%s); taking the "
                            "lock again", name, " ".join(str(exc).split()))  # fmt: skip
