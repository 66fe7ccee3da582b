"""Leases on NATS: a fixed number of slices of work shared by any number of workers,
each slice held by one worker at a time, moving by themselves when a worker joins, stops
or dies. No coordinator but the server's key-value store.

The leases of a group (``projection.billing``) live in one JetStream key-value bucket
(:data:`BUCKET`), whose entries expire ``ttl`` seconds after they were last written:

- ``<group>.w.<worker>``: each worker's presence, written every ``ttl / 3`` seconds;
- ``<group>.s.<slice>``: a slice's lease, taken with ``create`` (which the server grants
  only when the key does not exist, was deleted or expired) and renewed with ``update``
  on the revision this worker last wrote (compare-and-set: a lease that expired and was
  taken by another worker cannot be renewed by its old holder).

Every worker sees the same live workers and holds an equal share of the slices (the
first, sorted, one more when they do not divide evenly): it renews what it holds, lets
go (deletes) what is over its share, and takes free slices up to it. Only counts are
shared out, so a worker coming or going moves only the slices over or under a share. A
worker SIGKILLed stops writing: its entries expire within ``ttl``, the others see it
gone at their next round and take its slices. So a slice moves within about
``ttl + ttl / 3`` of its holder's death, and within a round or two when the holder stops
cleanly. The requests of a round go out together, so that a round stays short even
while the worker's event loop is busy applying batches.

A lease is liveness, not safety: a holder cut off from NATS may not know for a moment
that it lost it. It stops counting on a slice ``ttl - ttl / 4`` after its last renewal
was sent (the server's clock starts later), and whatever it writes is fenced where it
writes: a slice's checkpoint moves only from where its writer last left it (see
:meth:`toolkit.read.slices.SlicedStore.write_slices`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.errors import (
    BadRequestError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from nats.js.kv import KeyValue

from toolkit import backoff
from toolkit.nats.connection import Connection, OnConnection

log = logging.getLogger(__name__)

BUCKET = "toolkit_leases"
"""The key-value bucket of every group's leases (one per account)."""

DEFAULT_TTL = 6.0
"""Seconds an entry lives unless renewed: a dead worker's slices move within about
``1.33 * ttl`` (8 s), under the 10 s the toolkit promises by default."""

_KEY_UNSAFE = re.compile(r"[^-_=a-zA-Z0-9]")


class Holder(msgspec.Struct, frozen=True):
    """Who holds a lease, as written in its entry (and shown by ``toolkit status``)."""

    worker: str
    host: str
    pid: int
    since: str


def worker_id() -> str:
    """A new worker's name: host, pid and a random part (a restarted pid is new)."""
    host = _KEY_UNSAFE.sub("_", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class SliceHolder:
    slice: int
    holder: Holder | None


async def open_bucket(connection: Connection, ttl: float, replicas: int = 1) -> KeyValue:
    """The leases' bucket, made with ``ttl`` if it does not exist yet. One that exists
    keeps its own time to live (every worker then renews on its rhythm): one deployment,
    one ttl."""
    js = connection.js
    try:
        return await js.key_value(BUCKET)
    except (NotFoundError, nats.js.errors.BucketNotFoundError):
        pass
    config = KeyValueConfig(bucket=BUCKET, ttl=ttl, history=1, replicas=replicas)
    try:
        return await js.create_key_value(config)
    except BadRequestError:  # made meanwhile by another worker, maybe with another ttl
        return await js.key_value(BUCKET)


async def bucket_ttl(kv: KeyValue, default: float) -> float:
    status = await kv.status()
    ttl = status.ttl
    return float(ttl) if ttl else default


class LeaseGroup(OnConnection):
    """This worker's share of a group's slices, kept while :meth:`run` runs.

    :attr:`held` is what the worker may work on now; :attr:`changed` is set whenever it
    changes (the worker clears it once it has looked)."""

    def __init__(
        self,
        connection: Connection,
        group: str,
        slices: int,
        *,
        ttl: float = DEFAULT_TTL,
        replicas: int = 1,
        worker: str | None = None,
        sticky: bool = False,
    ) -> None:
        if slices < 1:
            raise ValueError(f"a lease group needs at least one slice, not {slices}")
        self.connection = connection
        self.group = group
        self.slices = slices
        self.ttl = ttl
        self.replicas = replicas
        self.worker = worker or worker_id()
        self.sticky = sticky
        """Keep what is held, and take whatever comes free, instead of a fair share: a
        lock (one slice) that stays with its holder until it stops or dies (a relay's)."""
        self.held: frozenset[int] = frozenset()
        self.changed = asyncio.Event()
        self.ready = asyncio.Event()
        """Set after the first round: the worker has taken what was free for it."""
        self._revisions: dict[int, int] = {}
        self._renewed: dict[int, float] = {}  # loop time each lease's last renewal was sent
        self._lapsed: set[int] = set()  # held, but found not renewed recently enough
        self._since = datetime.now(UTC).isoformat()
        self._kv: KeyValue | None = None

    def _key(self, slice_: int) -> str:
        return f"{self.group}.s.{slice_}"

    def _member_key(self, worker: str | None = None) -> str:
        return f"{self.group}.w.{worker or self.worker}"

    def _value(self) -> bytes:
        holder = Holder(self.worker, socket.gethostname(), os.getpid(), self._since)
        return msgspec.json.encode(holder)

    def holds(self, slice_: int) -> bool:
        """Whether this worker may still count on ``slice_``: held, and renewed recently
        enough that the server cannot have let it expire yet."""
        if slice_ not in self.held:
            return False
        sent = self._renewed.get(slice_)
        if sent is not None and asyncio.get_running_loop().time() - sent < self.ttl * 0.75:
            return True
        self._lapsed.add(slice_)  # (the worker is told when a renewal makes it usable again)
        return False

    def lost(self, slice_: int) -> None:
        """Let go of a slice the worker found taken (its checkpoint moved under it)."""
        self._set_held(self.held - {slice_})
        self._revisions.pop(slice_, None)
        self._renewed.pop(slice_, None)

    async def run(self, stop: asyncio.Event) -> None:
        """Take, keep and give back slices until ``stop``; then give back every one."""
        waits = backoff.Backoff(0.25, self.ttl / 3)
        try:
            while not stop.is_set():
                try:
                    if self._kv is None:
                        self._kv = await open_bucket(self.connection, self.ttl, self.replicas)
                        self.ttl = await bucket_ttl(self._kv, self.ttl)
                    await self._round(self._kv)
                    self.ready.set()
                    waits.reset()
                    await backoff.pause(stop, self.ttl / 3)
                except (nats.errors.Error, TimeoutError, OSError) as exc:
                    self._expire()
                    log.warning(
                        "%s: leases of %s could not be renewed (%s); trying again in %.1fs",
                        self.worker, self.group, str(exc) or type(exc).__name__, waits.delay,
                    )  # fmt: skip
                    await waits.wait(stop)
        finally:
            await self._give_back()

    async def _round(self, kv: KeyValue) -> None:
        """Say this worker is alive, renew what it holds, let go of what is over its
        share, take free slices up to it. Each step's requests go out together: a round
        must not take longer than the leases last, whatever the loop is busy with."""
        await kv.put(self._member_key(), self._value())
        # One look at the group's keys a round (each look is a consumer the server keeps a
        # moment after it is done: one a round, not one a question).
        keys = await _keys(kv, f"{self.group}.")
        members = sorted(k[2:] for k in keys if k.startswith("w."))
        if self.worker not in members:  # (the put above makes it one, unless it expired)
            members = sorted([*members, self.worker])
        share = self.slices if self.sticky else _share(self.slices, members, self.worker)
        renewed = await asyncio.gather(*(self._renew(kv, k) for k in sorted(self.held)))
        held = {k for k, kept in zip(sorted(self.held), renewed, strict=True) if kept}
        over = sorted(held)[share:]  # the highest go: every worker keeps its lowest
        await asyncio.gather(*(self._let_go(kv, k) for k in over))
        held -= set(over)
        if len(held) < share:
            taken = {int(k[2:]) for k in keys if k.startswith("s.") and k[2:].isdigit()}
            free = [k for k in self._preference() if k not in taken and k not in held]
            got = await asyncio.gather(*(self._take(kv, k) for k in free[: share - len(held)]))
            held |= {k for k in got if k is not None}
        self._set_held(frozenset(held))

    async def _renew(self, kv: KeyValue, k: int) -> bool:
        sent = asyncio.get_running_loop().time()
        try:
            revision = await kv.update(self._key(k), self._value(), last=self._revisions[k])
        except KeyWrongLastSequenceError:
            log.warning("%s: lost slice %d of %s (it expired)", self.worker, k, self.group)
            return False
        self._revisions[k], self._renewed[k] = revision, sent
        if k in self._lapsed:  # held all along: ``held`` does not change, so say it
            self._lapsed.discard(k)
            self.changed.set()
        return True

    async def _let_go(self, kv: KeyValue, k: int) -> None:
        await _delete(kv, self._key(k), self._revisions.pop(k, None))
        self._renewed.pop(k, None)

    async def _take(self, kv: KeyValue, k: int) -> int | None:
        sent = asyncio.get_running_loop().time()
        try:
            self._revisions[k] = await kv.create(self._key(k), self._value())
        except KeyWrongLastSequenceError:
            return None  # taken meanwhile by another worker
        self._renewed[k] = sent
        return k

    def _preference(self) -> list[int]:
        """The slices in the order this worker tries free ones: from a place of its own,
        so that workers taking at the same moment seldom ask for the same slice."""
        start = zlib.crc32(self.worker.encode()) % self.slices
        return [(start + i) % self.slices for i in range(self.slices)]

    async def holders(self) -> list[SliceHolder]:
        """Who holds each slice now (None: nobody)."""
        kv = self._kv or await open_bucket(self.connection, self.ttl, self.replicas)
        return await holders(kv, self.group, self.slices)

    def _expire(self) -> None:
        """Let go of the slices not renewed for too long (the server may have let them go)."""
        self._set_held(frozenset(k for k in self.held if self.holds(k)))

    def _set_held(self, held: frozenset[int]) -> None:
        if held != self.held:
            gained, lost = held - self.held, self.held - held
            if gained or lost:
                moved = [*(f"+{k}" for k in sorted(gained)), *(f"-{k}" for k in sorted(lost))]
                log.info(
                    "%s: %s slices %s; holds %d of %d",
                    self.worker, self.group, " ".join(moved), len(held), self.slices,
                )  # fmt: skip
            self.held = held
            self._lapsed &= held
            self.changed.set()

    async def _give_back(self) -> None:
        """Delete this worker's leases and presence, so the others take them at once."""
        kv, held = self._kv, self.held
        self._set_held(frozenset())
        if kv is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await asyncio.gather(
                    *(_delete(kv, self._key(k), self._revisions.get(k)) for k in held)
                )
                await kv.delete(self._member_key())


def _share(slices: int, members: list[str], worker: str) -> int:
    """How many slices ``worker`` should hold: an equal share, the first members (sorted)
    taking one more when they do not divide evenly. Only counts are shared out, not which
    slices: when a worker comes or goes, only the slices over or under a share move."""
    base, extra = divmod(slices, len(members))
    return base + (1 if members.index(worker) < extra else 0)


_LOOK_GONE_AFTER = 2.0
"""Seconds the server keeps a look's consumer once it is done (its default is longer)."""


_QUIET = 0.25
"""Seconds a look waits for its next entry before asking the server whether any remain."""


async def _keys(kv: KeyValue | None, prefix: str) -> list[str]:
    """What follows ``prefix`` in the keys the bucket holds now (none expired or deleted).
    (KeyValue.keys reads the whole bucket and filters by substring: a watch of the
    prefix reads only those.)

    nats-py marks the end of a look with the entry the server counted last; when that
    entry expires between the count and its delivery (leases expire all the time), the
    mark never comes and a plain ``async for`` waits forever: the worker's rounds stop,
    and with them its leases. So a quiet look asks the server what is left to deliver,
    and ends after one more quiet wait once nothing is."""
    assert kv is not None
    watcher = await kv.watch(
        f"{prefix}>", meta_only=True, ignore_deletes=True, inactive_threshold=_LOOK_GONE_AFTER
    )
    found: list[str] = []
    drained = False  # the server had nothing more to deliver at the last quiet wait
    try:
        while True:
            try:
                entry = await watcher.updates(timeout=_QUIET)  # type: ignore[no-untyped-call]
            except nats.errors.TimeoutError:
                if drained:
                    break
                assert watcher._sub is not None  # (set by watch)
                info = await watcher._sub.consumer_info()
                drained = info.num_pending == 0
                continue
            if entry is None:  # no more of them now
                break
            found.append(entry.key[len(prefix) :])
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    return found


async def _delete(kv: KeyValue, key: str, revision: int | None) -> None:
    """Delete a lease this worker wrote at ``revision``, unless it has changed since
    (expired and taken by another worker: theirs now). nats-py reports that as a plain
    BadRequestError (err_code 10071) from ``delete``, where ``update`` translates it."""
    try:
        await kv.delete(key, last=revision)
    except (KeyWrongLastSequenceError, KeyNotFoundError):
        pass
    except BadRequestError as exc:
        if exc.err_code != 10071:
            raise


async def group_holders(js: JetStreamContext, group: str, slices: int) -> list[SliceHolder]:
    """Who holds each slice of ``group`` now, read without making the bucket (before any
    worker made it, nobody holds anything)."""
    try:
        kv = await js.key_value(BUCKET)
    except (NotFoundError, nats.js.errors.BucketNotFoundError):
        return [SliceHolder(k, None) for k in range(slices)]
    return await holders(kv, group, slices)


async def holders(kv: KeyValue, group: str, slices: int) -> list[SliceHolder]:
    """Who holds each slice of ``group`` now (None: nobody)."""
    found: list[SliceHolder] = []
    for k in range(slices):
        try:
            entry = await kv.get(f"{group}.s.{k}")
        except KeyNotFoundError:
            found.append(SliceHolder(k, None))
            continue
        holder = None
        if entry.value:
            with contextlib.suppress(msgspec.ValidationError, msgspec.DecodeError):
                holder = msgspec.json.decode(entry.value, type=Holder)
        found.append(SliceHolder(k, holder))
    return found
