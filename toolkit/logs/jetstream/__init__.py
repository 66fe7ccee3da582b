"""JetStream as the event store: a persistence module for ``eventsourcing``.

Select it with ``PERSISTENCE_MODULE=toolkit.logs.jetstream`` and ``NATS_URL``; a context's
log is then a JetStream stream instead of a SQLite file or a PostgreSQL table.

Layout. An application's events live in the stream ``<name>_log`` (``JETSTREAM_STREAM``
overrides it), one subject per aggregate: ``<name>_log.<aggregate-id>``, the id encoded by
:func:`toolkit.wire.encode_token` so that no id can add a token or a wildcard. Tracking
records of a process application live in the same stream under
``<name>_log.tracking.<application>`` (three tokens: never an aggregate's subject, and
never matched by ``<name>_log.*``, the filter of every notification read). Snapshots (and
any other purpose) get a stream of their own, ``<name>_log_snapshots``. The private log's
subjects start with ``<name>_log``, never with ``<name>.``, so they cannot collide with the
context's public stream; JetStream refuses to create a stream whose subjects overlap
another's, so a clash (a context named ``sales_log``) fails loudly at start.

A message's body is ``b"<version> <topic>\\n"`` followed by the stored event's state
(already compressed and encrypted by eventsourcing's mapper when configured). Version and
topic ride in the body rather than in headers because nats-py pays for every header on
both sides; a stored message keeps only the headers its save was published with (the
expected sequence, and the batch id and number of an atomic batch).

Notification ids are the stream sequences. The log stream denies deletes and purges, so
the sequence never has gaps in an application's log (a process application's log has
gaps where its tracking records are).

Optimistic concurrency. Each save sends, for the first message of every aggregate in it,
``Nats-Expected-Last-Subject-Sequence``: the stream sequence of that aggregate's last
event as the recorder knows it (0 for a new aggregate). JetStream checks it under the
stream's lock and refuses the whole save if another writer appended to the aggregate
meanwhile. The recorder learns each aggregate's last (version, sequence) from what it
reads and writes, so a load followed by a save costs no extra round trip. When the server
refuses, the recorder reads the aggregate's last event: if its version is at or above the
first version being saved, the save raises :class:`~eventsourcing.persistence.IntegrityError`
(the conflict eventsourcing expects); otherwise the knowledge was merely stale and the save
is sent again with the right sequence. Versions of an aggregate therefore only grow along
the stream: a version below the aggregate's last one is refused even if it was never
stored, which is what optimistic concurrency needs and what eventsourcing's aggregates do.

Atomicity. A save of one event is one publish. A save of several events (several
aggregates, or events with a tracking record) is one JetStream atomic batch (ADR-50,
nats-server 2.12+, the stream created with ``allow_atomic``): the messages carry
``Nats-Batch-Id`` and ``Nats-Batch-Sequence``, the last ``Nats-Batch-Commit``; the server
stages them and stores all of them, with consecutive sequences, or none, checking every
expected-sequence header at commit under the stream's lock. So a conflict on any aggregate
stores nothing of the save, other writers' events never interleave with it, and a tracking
record is stored with the events it produced or not at all. A batch holds at most 1000
messages (the server's limit); a larger save is refused with
:class:`~eventsourcing.persistence.DataError` before anything is sent. A batch refused
because the stream has 50 batches in flight is sent again after a short back-off (nothing of
it was stored). When no acknowledgement comes within ``JETSTREAM_TIMEOUT`` the save raises
:class:`~eventsourcing.persistence.OperationalError`: it may or may not have been stored,
exactly as a lost COMMIT reply from a SQL server.

Reads. One aggregate's events come from batched direct gets by subject (``allow_direct``):
one request, answered with the aggregate's messages in order; the last event alone (a
snapshot, ``desc=True, limit=1``) is one direct get by last subject. Notifications are read
the same way with the filter ``<name>_log.*``; ``topics`` are filtered here, since the topic
is in the body. ``subscribe()`` follows the log live with an ordered push consumer.

Threads. eventsourcing's recorders are synchronous and nats-py is asyncio: a factory runs a
private event loop in a daemon thread owning one NATS connection; the recorders' methods
submit one coroutine to it and wait for its result. All of a recorder's bookkeeping happens
in that loop, so it needs no locks. A process that exits without closing its application
has its datastores closed at exit, while their threads still run: otherwise eventsourcing's
``Application.__del__`` would wait, during interpreter shutdown, for a loop whose daemon
thread no longer runs.

Replicated streams. With ``JETSTREAM_REPLICAS`` above 1, direct gets may be answered by a
follower that has not applied the latest writes yet: reads are then eventually consistent,
while writes stay safe (the expected-sequence checks are made by the stream's leader), so a
stale read turns into a conflict on save, never into a lost update.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import functools
import itertools
import queue
import re
import sys
import threading
import weakref
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar
from uuid import UUID

import nats.errors
import orjson
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    DatabaseError,
    DataError,
    InfrastructureFactory,
    IntegrityError,
    Notification,
    OperationalError,
    ProcessRecorder,
    ProgrammingError,
    Recorder,
    StoredEvent,
    Subscription,
    Tracking,
    TrackingRecorder,
)
from eventsourcing.utils import Environment, EnvType, resolve_topic, strtobool
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError
from nats.nuid import NUID

from toolkit.nats.connection import Connection
from toolkit.wire import decode_token, encode_token

T = TypeVar("T")

MIN_SERVER_VERSION = (2, 12)
"""Atomic batch publish (and batched direct get) need nats-server 2.12 or newer."""
MAX_BATCH = 1000
"""The most messages JetStream takes in one atomic batch."""
EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
BATCH_ID = "Nats-Batch-Id"
BATCH_SEQUENCE = "Nats-Batch-Sequence"
BATCH_COMMIT = "Nats-Batch-Commit"
_WRONG_LAST_SEQUENCE = frozenset({10071, 10164})
"""The expected last (subject) sequence did not hold: someone else wrote first."""
_TRY_AGAIN = frozenset({10176, 10210})
"""An atomic batch abandoned (incomplete) or refused (too many in flight): nothing stored."""
_NOTHING = -(2**63)
"""The version of an aggregate that has no events."""
_READ_CHUNK = 1000
_HEADS_KEPT = 100_000
"""Aggregates whose last (version, sequence) a recorder remembers."""
_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,200}")


class _Head(NamedTuple):
    version: int
    sequence: int


@dataclass(frozen=True, slots=True)
class _Entry:
    """One message of a save: an event, or a tracking record (version = notification id)."""

    subject: str
    version: int
    payload: bytes
    label: str


def check_server_version(version: str, url: str) -> None:
    major, minor = (int(p) for p in version.split("-")[0].split(".")[:2])
    if (major, minor) < MIN_SERVER_VERSION:
        raise OperationalError(
            f"NATS server at {url} is version {version}; JetStream as the event log needs "
            f"{MIN_SERVER_VERSION[0]}.{MIN_SERVER_VERSION[1]} or newer (atomic batch publish)"
        )


class _Waiter:
    """Replies to one request: the first message, or (``multi``) every message up to and
    including a status message (a batched direct get ends with 204 EOB, or 404)."""

    __slots__ = ("future", "messages", "multi")

    def __init__(self, future: asyncio.Future[list[Msg]], multi: bool) -> None:
        self.future = future
        self.multi = multi
        self.messages: list[Msg] = []

    def add(self, msg: Msg) -> None:
        if self.future.done():
            return
        self.messages.append(msg)
        if not self.multi or (msg.headers is not None and "Status" in msg.headers):
            self.future.set_result(self.messages)


def _settle(future: concurrent.futures.Future[T], task: asyncio.Task[T]) -> None:
    if task.cancelled():
        future.cancel()
    elif (exc := task.exception()) is not None:
        future.set_exception(exc)
    else:
        future.set_result(task.result())


def _parse_header_lines(raw: bytes) -> dict[str, str]:
    """nats-py's header parser with the same results, about three times faster: it
    tested each character of each name for whitespace in a generator. Installed on the
    datastore's own connection only."""
    headers: dict[str, str] = {}
    for line in raw.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if key and len(key.split()) != 1:  # whitespace inside a name: not a header
            continue
        headers[key] = value.strip().decode("utf-8", "replace")
    return headers


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


_open_datastores: weakref.WeakSet[JetStreamDatastore] = weakref.WeakSet()


@atexit.register
def _close_open_datastores() -> None:
    """Close what the process left open while the loops' threads still run (atexit
    comes before interpreter shutdown stops daemon threads)."""
    for datastore in list(_open_datastores):
        datastore.close()


class JetStreamDatastore:
    """A NATS connection owned by a private event loop in a daemon thread, and the
    settings of the streams the recorders use. Recorders call into it with :meth:`call`."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        replicas: int = 1,
        storage: StorageType = StorageType.FILE,
        originator_id_type: str = "uuid",
        name: str = "eventsourcing",
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.replicas = replicas
        self.storage = storage
        self.uuid_ids = originator_id_type == "uuid"
        self.loop = asyncio.new_event_loop()
        self._closed = False
        self.subscriptions: weakref.WeakSet[JetStreamSubscription] = weakref.WeakSet()
        """Live subscriptions: closing the datastore ends their iteration."""
        self._thread = threading.Thread(target=self._run, name=f"jetstream-log-{name}", daemon=True)
        self._thread.start()
        self._inbox = ""
        self._tokens = itertools.count(1)
        self._waiting: dict[str, _Waiter] = {}
        self._nuid = NUID()
        self.connection = Connection(url, name=f"jetstream-log-{name}", on_connect=self._prepare)
        """Replaces a client the server closed (saves go on without a restart)."""
        try:
            self.call(self.connection.open())
        except BaseException:
            self._stop_loop()
            raise

    @property
    def client(self) -> Client:
        return self.connection.client
        _open_datastores.add(self)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
            left = asyncio.all_tasks(self.loop)  # nats-py's, when closing did not end them
            for task in left:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()

    async def _prepare(self, client: Client) -> None:
        """What each client of the datastore needs (the first, and any replacing one)."""
        client._parse_header_lines = _parse_header_lines  # type: ignore[method-assign]
        check_server_version(client.connected_server_version._server_version, self.url)
        self._inbox = client.new_inbox() + "."
        await client.subscribe(self._inbox + "*", cb=self._on_reply)
        for subscription in list(self.subscriptions):  # they followed the closed client
            subscription.lose("the server closed the JetStream log's connection")

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` in the datastore's loop and return its result (from any thread
        but the loop's own)."""
        if self._closed or sys.is_finalizing():  # finalizing: the loop's thread is stopped
            coro.close()
            raise OperationalError("the JetStream log's connection is closed")
        if threading.get_ident() == self._thread.ident:
            coro.close()
            raise ProgrammingError("a JetStream recorder was called from its own event loop")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        try:
            self.loop.call_soon_threadsafe(self._start, coro, future)
        except RuntimeError:  # the loop is closed
            coro.close()
            raise OperationalError("the JetStream log's connection is closed") from None
        try:
            return future.result(self.timeout * 10)
        except TimeoutError:  # an answer that did not come (also concurrent.futures')
            raise OperationalError(
                f"no answer from the JetStream log at {self.url} within {self.timeout:g}s"
            ) from None
        except nats.errors.Error as exc:
            raise OperationalError(f"NATS: {exc!r}") from exc

    def _start(self, coro: Coroutine[Any, Any, T], future: concurrent.futures.Future[T]) -> None:
        """In the loop: run ``coro`` as a task whose outcome goes to ``future``. Leaner
        than ``run_coroutine_threadsafe`` (about 90 against 140 µs a call here)."""
        task = self.loop.create_task(coro)
        task.add_done_callback(functools.partial(_settle, future))

    def close(self) -> None:
        _open_datastores.discard(self)
        if self._closed or sys.is_finalizing():  # finalizing: nothing would answer
            self._closed = True
            return
        for subscription in list(self.subscriptions):
            subscription.stop()
        with contextlib.suppress(Exception):
            self.call(self._close())
        self._closed = True
        self._stop_loop()

    async def _close(self) -> None:
        await self.connection.close(drain=False)

    def _stop_loop(self) -> None:
        self._closed = True
        with contextlib.suppress(RuntimeError):  # already closed
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    # -- requests (in the loop) -------------------------------------------------------

    async def _on_reply(self, msg: Msg) -> None:
        waiter = self._waiting.get(msg.subject[len(self._inbox) :])
        if waiter is not None:
            waiter.add(msg)

    async def send(
        self, subject: str, payload: bytes, headers: dict[str, str] | None, multi: bool = False
    ) -> asyncio.Future[list[Msg]]:
        """Publish with a reply inbox; the returned future gets the replies
        (``TimeoutError`` after the datastore's timeout)."""
        token = str(next(self._tokens))
        future: asyncio.Future[list[Msg]] = self.loop.create_future()
        self._waiting[token] = _Waiter(future, multi)
        timer = self.loop.call_later(self.timeout, _expire, future)

        def forget(_: object) -> None:
            timer.cancel()
            self._waiting.pop(token, None)

        future.add_done_callback(forget)
        try:
            client = await self.connection.current()  # waits for a replacement under way
            await client.publish(subject, payload, reply=self._inbox + token, headers=headers)
        except BaseException:
            future.cancel()
            raise
        return future

    async def request(
        self, subject: str, payload: bytes = b"", headers: dict[str, str] | None = None
    ) -> Msg:
        replies = await (await self.send(subject, payload, headers))
        return replies[0]

    def next_id(self) -> str:
        return self._nuid.next().decode()


def _status(msg: Msg) -> str | None:
    return msg.headers.get("Status") if msg.headers else None


def _ack(msg: Msg) -> tuple[int, int | None, str]:
    """(stream sequence, JetStream error code, description) of a publish acknowledgement."""
    status = _status(msg)
    if status == "503":
        return 0, 503, "no stream answers on this subject (was the log stream deleted?)"
    if not msg.data:
        return 0, None, ""  # the empty acknowledgement of a batch's first message
    ack = orjson.loads(msg.data)
    error = ack.get("error")
    if error:
        return 0, int(error.get("err_code", 0)), str(error.get("description", error))
    return int(ack["seq"]), None, ""


def _encode(version: int, topic: str, state: bytes) -> bytes:
    head = b"%d %s\n" % (version, topic.encode())
    if topic.find("\n") >= 0:
        raise DataError(f"a topic must not contain a line break: {topic!r}")
    return head + state


def _decode(payload: bytes) -> tuple[int, str, bytes]:
    try:
        end = payload.index(b"\n")
        space = payload.index(b" ", 0, end)
        return int(payload[:space]), payload[space + 1 : end].decode(), payload[end + 1 :]
    except (ValueError, UnicodeDecodeError):
        raise DataError(f"not a stored event of the JetStream log: {payload[:80]!r}") from None


class JetStreamRecorder(Recorder):
    """What the recorders share: the stream, its provisioning, reads and atomic writes."""

    def __init__(
        self, datastore: JetStreamDatastore, stream_name: str, *, create: bool = True
    ) -> None:
        if not _STREAM_NAME.fullmatch(stream_name):
            raise ProgrammingError(f"invalid JetStream stream name {stream_name!r}")
        self.datastore = datastore
        self.stream_name = stream_name
        self.prefix = stream_name + "."
        self.events_filter = stream_name + ".*"
        self._direct = f"$JS.API.DIRECT.GET.{stream_name}"
        self._heads: dict[str, _Head] = {}
        self.resent = 0
        """Saves sent again because JetStream had too many atomic batches in flight."""
        if create:
            self.create_stream()

    # -- the stream -------------------------------------------------------------------

    def stream_config(self) -> StreamConfig:
        return StreamConfig(
            name=self.stream_name,
            description="eventsourcing log (toolkit.logs.jetstream)",
            subjects=[self.prefix + ">"],
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            storage=self.datastore.storage,
            num_replicas=self.datastore.replicas,
            allow_direct=True,
            allow_atomic=True,
            deny_delete=True,
            deny_purge=True,
        )

    def create_stream(self) -> None:
        """Create the stream, or turn on what the log needs on an existing one."""
        self.datastore.call(self._create_stream())

    async def _create_stream(self) -> None:
        js = self.datastore.client.jetstream(timeout=self.datastore.timeout)
        wanted = self.stream_config()
        try:
            info = await js.stream_info(self.stream_name)
        except NotFoundError:
            await js.add_stream(wanted)
            return
        have = info.config
        if have.subjects != wanted.subjects:
            raise OperationalError(
                f"stream {self.stream_name} exists with subjects {have.subjects}, not "
                f"{wanted.subjects}: it is not an eventsourcing log (set JETSTREAM_STREAM)"
            )
        if not (have.allow_atomic and have.allow_direct):
            have.allow_atomic = True
            have.allow_direct = True
            await js.update_stream(have)

    # -- subjects and ids ---------------------------------------------------------------

    def subject(self, originator_id: UUID | str) -> str:
        return self.prefix + encode_token(str(originator_id))

    def originator_id(self, subject: str) -> UUID | str:
        value = decode_token(subject[len(self.prefix) :])
        if self.datastore.uuid_ids:
            with contextlib.suppress(ValueError):
                return UUID(value)
        return value

    # -- reading --------------------------------------------------------------------------

    async def _last(self, subject: str) -> Msg | None:
        """The last message on ``subject`` (wildcards allowed), or None."""
        msg = await self.datastore.request(f"{self._direct}.{subject}")
        status = _status(msg)
        if status == "404":
            return None
        if status is not None:
            raise OperationalError(f"direct get on {self.stream_name} answered {status}")
        return msg

    async def _range(
        self, subject: str, start: int, count: int, *, headers: bool
    ) -> tuple[list[Msg], int]:
        """Up to ``count`` messages on ``subject`` from sequence ``start`` (fewer: there
        are no more), and the sequence of the last. Without ``headers`` the messages come
        bare (no sequence, no subject): nats-py parses headers slowly, and one aggregate's
        reader knows its subject and needs only the last sequence."""
        query: dict[str, object] = {"seq": start, "next_by_subj": subject, "batch": count}
        if not headers:
            query["no_hdr"] = True
        replies = await (
            await self.datastore.send(self._direct, orjson.dumps(query), None, multi=True)
        )
        end = replies.pop()
        status = _status(end)
        if status == "404":
            return [], 0
        if status != "204":
            raise OperationalError(
                f"batched direct get on {self.stream_name} answered {status}: "
                f"{(end.headers or {}).get('Description', '')}"
            )
        return replies, int((end.headers or {})["Nats-Last-Sequence"])

    def _remember(self, subject: str, head: _Head) -> None:
        heads = self._heads
        heads.pop(subject, None)
        heads[subject] = head
        if len(heads) > _HEADS_KEPT:
            del heads[next(iter(heads))]

    async def _select_events(
        self,
        originator_id: UUID | str,
        gt: int | None,
        lte: int | None,
        desc: bool,
        limit: int | None,
    ) -> list[StoredEvent]:
        subject = self.subject(originator_id)
        if desc and lte is None and limit == 1:
            msg = await self._last(subject)
            if msg is None:
                self._remember(subject, _Head(_NOTHING, 0))
                return []
            version, topic, state = _decode(msg.data)
            self._remember(subject, _Head(version, int(msg.headers["Nats-Sequence"])))  # type: ignore[index]
            if gt is not None and version <= gt:
                return []
            return [StoredEvent(originator_id, version, topic, state)]
        events: list[StoredEvent] = []
        if limit == 0:
            return events
        ascending_limit = None if desc else limit
        start, tail = 1, _Head(_NOTHING, 0)  # the last message seen: version, sequence
        while True:
            want = _READ_CHUNK
            if ascending_limit is not None and gt is None:
                want = min(want, ascending_limit - len(events))
            msgs, last = await self._range(subject, start, want, headers=False)
            if not msgs:  # the previous chunk ended with the aggregate's last event
                self._remember(subject, tail)
                break
            enough = False
            for msg in msgs:
                version, topic, state = _decode(msg.data)
                if lte is not None and version > lte:
                    enough = True
                    break
                if gt is None or version > gt:
                    events.append(StoredEvent(originator_id, version, topic, state))
                    if ascending_limit is not None and len(events) >= ascending_limit:
                        enough = True
                        break
            tail = _Head(_decode_version(msgs[-1].data), last)
            if len(msgs) < want:
                self._remember(subject, tail)
                break
            if enough:
                break
            start = last + 1
        if desc:
            events.reverse()
            if limit is not None:
                del events[limit:]
        return events

    # -- writing ------------------------------------------------------------------------

    async def _refresh(self, subjects: Sequence[str]) -> None:
        lasts = await asyncio.gather(*(self._last(s) for s in subjects))
        for subject, msg in zip(subjects, lasts, strict=True):
            if msg is None:
                self._remember(subject, _Head(_NOTHING, 0))
            else:
                sequence = int(msg.headers["Nats-Sequence"])  # type: ignore[index]
                self._remember(subject, _Head(_decode_version(msg.data), sequence))

    async def _expected(self, firsts: dict[str, _Entry], known: bool) -> dict[str, int]:
        """The last sequence each subject must have for the save to hold; raises
        IntegrityError when a subject already has the version being written (or later)."""
        if not known:
            unknown = [s for s, e in firsts.items() if s not in self._heads and e.version > 1]
            if unknown:
                await self._refresh(unknown)
        expected: dict[str, int] = {}
        for subject, entry in firsts.items():
            head = self._heads.get(subject)
            if head is None:
                expected[subject] = 0  # presumably new; JetStream says if not
            elif head.version >= entry.version:
                raise IntegrityError(
                    f"{entry.label} already has version {head.version} in stream "
                    f"{self.stream_name}: cannot record version {entry.version}"
                )
            else:
                expected[subject] = head.sequence
        return expected

    async def _append(self, entries: list[_Entry]) -> list[int]:
        """Store ``entries`` atomically, each subject's first after the last the recorder
        knows of it; returns their stream sequences."""
        if len(entries) > MAX_BATCH:
            raise DataError(
                f"a save of {len(entries)} messages is more than JetStream stores atomically "
                f"({MAX_BATCH}): save fewer events at once"
            )
        firsts: dict[str, _Entry] = {}
        lasts: dict[str, int] = {}
        for index, entry in enumerate(entries):
            previous = lasts.get(entry.subject)
            if previous is None:
                firsts[entry.subject] = entry
            elif entries[previous].version >= entry.version:
                raise IntegrityError(
                    f"{entry.label}: versions must increase within a save "
                    f"({entries[previous].version} then {entry.version})"
                )
            lasts[entry.subject] = index
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.datastore.timeout
        delay = 0.002
        known = False
        while True:
            expected = await self._expected(firsts, known)
            code, last, description = await self._publish(entries, expected)
            if code is None:
                first = last - len(entries) + 1
                for subject, index in lasts.items():
                    self._remember(subject, _Head(entries[index].version, first + index))
                return list(range(first, last + 1))
            if code in _WRONG_LAST_SEQUENCE:
                await self._refresh(list(firsts))
                known = True  # raise IntegrityError now if it is a conflict
            elif code in _TRY_AGAIN and loop.time() + delay < deadline:
                self.resent += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)
            else:
                raise OperationalError(
                    f"stream {self.stream_name} refused the save: {description} (code {code})"
                )
            if loop.time() > deadline:
                raise OperationalError(
                    f"stream {self.stream_name} kept refusing the save for "
                    f"{self.datastore.timeout:g}s: {description}"
                )

    async def _publish(
        self, entries: list[_Entry], expected: dict[str, int]
    ) -> tuple[int | None, int, str]:
        """(error code or None, last sequence, description)."""
        datastore = self.datastore
        replies: list[asyncio.Future[list[Msg]]] = []
        try:
            if len(entries) == 1:
                entry = entries[0]
                headers = {EXPECTED_LAST_SUBJECT_SEQUENCE: str(expected[entry.subject])}
                answer = await (await datastore.send(entry.subject, entry.payload, headers))
                sequence, code, description = _ack(answer[0])
                return code, sequence, description
            batch = datastore.next_id()
            count = len(entries)
            pending = dict(expected)  # the first message of each subject carries its check
            for number, entry in enumerate(entries, 1):
                headers = {BATCH_ID: batch, BATCH_SEQUENCE: str(number)}
                sequence_wanted = pending.pop(entry.subject, None)
                if sequence_wanted is not None:
                    headers[EXPECTED_LAST_SUBJECT_SEQUENCE] = str(sequence_wanted)
                if number == count:
                    headers[BATCH_COMMIT] = "1"
                if number in (1, count):
                    replies.append(await datastore.send(entry.subject, entry.payload, headers))
                else:
                    await datastore.client.publish(entry.subject, entry.payload, headers=headers)
            first, commit = await asyncio.gather(*replies, return_exceptions=True)
            if isinstance(commit, BaseException):
                raise commit
        except TimeoutError:
            raise OperationalError(
                f"no acknowledgement from stream {self.stream_name} within "
                f"{datastore.timeout:g}s: the save may or may not have been stored"
            ) from None
        except nats.errors.Error as exc:
            for reply in replies:
                reply.cancel()
            raise OperationalError(f"NATS: {exc!r}") from exc
        sequence, code, description = _ack(commit[0])
        if code is not None and isinstance(first, list):
            _, first_code, first_description = _ack(first[0])
            if first_code is not None:
                code, description = first_code, first_description  # the first says why
        return code, sequence, description

    def _events(self, stored_events: Sequence[StoredEvent]) -> list[_Entry]:
        return [
            _Entry(
                self.subject(event.originator_id),
                event.originator_version,
                _encode(event.originator_version, event.topic, event.state),
                f"aggregate {event.originator_id}",
            )
            for event in stored_events
        ]


def _decode_version(payload: bytes) -> int:
    try:
        return int(payload[: payload.index(b" ")])
    except ValueError:
        raise DataError(f"not a record of the JetStream log: {payload[:80]!r}") from None


class JetStreamAggregateRecorder(JetStreamRecorder, AggregateRecorder):
    """Events of aggregates, one subject each (snapshots use one of these)."""

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        if stored_events:
            entries = self._events(stored_events)
            self.datastore.call(self._append(entries))
        return None

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        return self.datastore.call(self._select_events(originator_id, gt, lte, desc, limit))


class JetStreamApplicationRecorder(JetStreamAggregateRecorder, ApplicationRecorder):
    """An application's log: notification ids are the stream's sequences."""

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        if not stored_events:
            return []
        return self.datastore.call(self._append(self._events(stored_events)))

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        first = 1 if start is None else (start if inclusive_of_start else start + 1)
        return self.datastore.call(
            self._select_notifications(max(first, 1), limit, stop, frozenset(topics))
        )

    async def _select_notifications(
        self, sequence: int, limit: int, stop: int | None, topics: frozenset[str]
    ) -> list[Notification]:
        found: list[Notification] = []
        while len(found) < limit and (stop is None or sequence <= stop):
            want = limit - len(found) if not topics else max(limit - len(found), _READ_CHUNK)
            if stop is not None:
                want = min(want, stop - sequence + 1)
            msgs, _ = await self._range(self.events_filter, sequence, want, headers=True)
            for msg in msgs:
                notification = self._notification(msg)
                if stop is not None and notification.id > stop:
                    return found
                if not topics or notification.topic in topics:
                    found.append(notification)
                    if len(found) == limit:
                        return found
            if len(msgs) < want:
                break
            sequence = int(msgs[-1].headers["Nats-Sequence"]) + 1  # type: ignore[index]
        return found

    def _notification(self, msg: Msg) -> Notification:
        headers = msg.headers or {}
        version, topic, state = _decode(msg.data)
        return Notification(
            id=int(headers["Nats-Sequence"]),
            originator_id=self.originator_id(headers["Nats-Subject"]),
            originator_version=version,
            topic=topic,
            state=state,
        )

    def max_notification_id(self) -> int | None:
        return self.datastore.call(self._max_notification_id())

    async def _max_notification_id(self) -> int | None:
        msg = await self._last(self.events_filter)
        return None if msg is None else int(msg.headers["Nats-Sequence"])  # type: ignore[index]

    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        return JetStreamSubscription(self, gt=gt, topics=topics)


class JetStreamSubscription(Subscription[JetStreamApplicationRecorder]):
    """Follows the log live with an ordered push consumer filtered to its events; yields
    notifications in log order, blocking at the head until more are stored."""

    high_water = 10_000
    """Notifications buffered before the consumer is paused (JetStream flow control)."""

    def __init__(
        self,
        recorder: JetStreamApplicationRecorder,
        gt: int | None = None,
        topics: Sequence[str] = (),
    ) -> None:
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        self._wanted = frozenset(topics)
        self._buffer: queue.SimpleQueue[Notification | None] = queue.SimpleQueue()
        self._paused = False
        self._room: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._nats_sub: Any = None
        self._nats_sub = recorder.datastore.call(self._follow(gt))
        recorder.datastore.subscriptions.add(self)

    async def _follow(self, gt: int | None) -> Any:
        self._room = asyncio.Event()
        recorder = self._recorder
        js = recorder.datastore.client.jetstream(timeout=recorder.datastore.timeout)
        config = ConsumerConfig(inactive_threshold=60.0)
        if gt:
            config.opt_start_seq = gt + 1
        return await js.subscribe(
            recorder.events_filter,
            stream=recorder.stream_name,
            cb=self._on_msg,
            ordered_consumer=True,
            config=config,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if gt else DeliverPolicy.ALL,
        )

    async def _on_msg(self, msg: Msg) -> None:
        if self._has_been_stopped:
            return
        try:
            tokens = msg.reply.split(".")
            sequence = int(tokens[5] if len(tokens) == 9 else msg.metadata.sequence.stream)
            version, topic, state = _decode(msg.data)
            if self._wanted and topic not in self._wanted:
                return
            notification = Notification(
                id=sequence,
                originator_id=self._recorder.originator_id(msg.subject),
                originator_version=version,
                topic=topic,
                state=state,
            )
        except Exception as exc:  # surfaced to the iterating thread, not lost in nats-py
            self._error = exc
            self._buffer.put(None)
            return
        self._buffer.put(notification)
        if self._buffer.qsize() > self.high_water and self._room is not None:
            self._paused = True
            self._room.clear()
            await self._room.wait()

    def __next__(self) -> Notification:
        if self._has_been_stopped:
            raise StopIteration
        item = self._buffer.get()
        if item is None or self._has_been_stopped:
            if self._error is not None:
                raise self._error
            raise StopIteration
        if self._paused and self._buffer.qsize() < self.high_water // 2:
            self._paused = False
            self._resume()
        self._last_notification_id = item.id
        return item

    def lose(self, reason: str) -> None:
        """End the iteration with :class:`OperationalError` (its consumer is gone)."""
        self._error = OperationalError(f"{reason}: subscribe to the log again")
        self._buffer.put(None)

    def _resume(self) -> None:
        room = self._room
        if room is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing waits
                self._recorder.datastore.loop.call_soon_threadsafe(room.set)

    def stop(self) -> None:
        if self._has_been_stopped:
            return
        super().stop()
        self._buffer.put(None)
        self._resume()
        nats_sub, self._nats_sub = self._nats_sub, None
        if nats_sub is not None:
            with contextlib.suppress(Exception):
                self._recorder.datastore.call(nats_sub.unsubscribe())


class JetStreamTrackingRecorder(JetStreamRecorder, TrackingRecorder):
    """Positions of upstream applications processed, one subject each
    (``<stream>.tracking.<application>``); a position must grow."""

    def tracking_subject(self, application_name: str) -> str:
        return f"{self.prefix}tracking.{encode_token(application_name)}"

    def _tracking(self, tracking: Tracking) -> _Entry:
        return _Entry(
            self.tracking_subject(tracking.application_name),
            tracking.notification_id,
            b"%d \n" % tracking.notification_id,
            f"tracking of {tracking.application_name}",
        )

    def insert_tracking(self, tracking: Tracking) -> None:
        self.datastore.call(self._append([self._tracking(tracking)]))

    def max_tracking_id(self, application_name: str) -> int | None:
        return self.datastore.call(self._max_tracking_id(application_name))

    async def _max_tracking_id(self, application_name: str) -> int | None:
        subject = self.tracking_subject(application_name)
        msg = await self._last(subject)
        if msg is None:
            return None
        version = _decode_version(msg.data)
        self._remember(subject, _Head(version, int(msg.headers["Nats-Sequence"])))  # type: ignore[index]
        return version


class JetStreamProcessRecorder(
    JetStreamTrackingRecorder, JetStreamApplicationRecorder, ProcessRecorder
):
    """An application log whose saves may carry a tracking record, stored in the same
    atomic batch as the events."""

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        tracking: Tracking | None = kwargs.get("tracking")
        entries = self._events(stored_events)
        if tracking is not None:
            entries.append(self._tracking(tracking))
        if not entries:
            return []
        sequences = self.datastore.call(self._append(entries))
        return sequences[: len(stored_events)]


class JetStreamFactory(InfrastructureFactory[JetStreamTrackingRecorder]):
    """eventsourcing's infrastructure on JetStream. Environment:

    - ``NATS_URL`` (required): the server(s), e.g. ``nats://127.0.0.1:4222``;
    - ``JETSTREAM_STREAM``: the log stream (default ``<application name>_log``);
    - ``JETSTREAM_REPLICAS`` (1), ``JETSTREAM_STORAGE`` (``file`` or ``memory``);
    - ``JETSTREAM_TIMEOUT`` (5 seconds): for each acknowledgement or read;
    - ``ORIGINATOR_ID_TYPE`` (``uuid`` or ``text``), ``CREATE_TABLE`` (create the
      streams, default yes), as for eventsourcing's SQL modules.
    """

    NATS_URL = "NATS_URL"
    JETSTREAM_STREAM = "JETSTREAM_STREAM"
    JETSTREAM_REPLICAS = "JETSTREAM_REPLICAS"
    JETSTREAM_STORAGE = "JETSTREAM_STORAGE"
    JETSTREAM_TIMEOUT = "JETSTREAM_TIMEOUT"
    ORIGINATOR_ID_TYPE = "ORIGINATOR_ID_TYPE"
    CREATE_TABLE = "CREATE_TABLE"

    aggregate_recorder_class = JetStreamAggregateRecorder
    application_recorder_class = JetStreamApplicationRecorder
    tracking_recorder_class = JetStreamTrackingRecorder
    process_recorder_class = JetStreamProcessRecorder

    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        url = self.env.get(self.NATS_URL)
        if not url:
            keys = ", ".join(self.env.create_keys(self.NATS_URL))
            raise OSError(f"NATS server URL not found in environment with keys: {keys}")
        storage = (self.env.get(self.JETSTREAM_STORAGE) or "file").lower()
        if storage not in ("file", "memory"):
            raise OSError(f"{self.JETSTREAM_STORAGE} must be 'file' or 'memory', not {storage!r}")
        id_type = (self.env.get(self.ORIGINATOR_ID_TYPE) or "uuid").lower()
        if id_type not in ("uuid", "text"):
            raise OSError(f"{self.ORIGINATOR_ID_TYPE} must be 'uuid' or 'text', not {id_type!r}")
        try:
            replicas = int(self.env.get(self.JETSTREAM_REPLICAS) or 1)
            timeout = float(self.env.get(self.JETSTREAM_TIMEOUT) or 5.0)
        except ValueError as exc:
            raise OSError(f"invalid JetStream setting: {exc}") from None
        self.datastore = JetStreamDatastore(
            url,
            timeout=timeout,
            replicas=replicas,
            storage=StorageType.MEMORY if storage == "memory" else StorageType.FILE,
            originator_id_type=id_type,
            name=self.env.name or "eventsourcing",
        )

    def stream_name(self, purpose: str = "events") -> str:
        name = self.env.get(self.JETSTREAM_STREAM) or f"{self.env.name or 'eventsourcing'}_log"
        if not _STREAM_NAME.fullmatch(name):
            raise OSError(
                f"{name!r} cannot name a JetStream stream (letters, digits, '_' and '-'): "
                f"set {self.JETSTREAM_STREAM}"
            )
        return name if purpose == "events" else f"{name}_{purpose}"

    def env_create_table(self) -> bool:
        return bool(strtobool(self.env.get(self.CREATE_TABLE) or "yes"))

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        return self.aggregate_recorder_class(
            self.datastore, self.stream_name(purpose), create=self.env_create_table()
        )

    def application_recorder(self) -> ApplicationRecorder:
        cls = self._resolve(self.APPLICATION_RECORDER_TOPIC, self.application_recorder_class)
        return cls(self.datastore, self.stream_name(), create=self.env_create_table())

    def tracking_recorder(
        self, tracking_recorder_class: type[JetStreamTrackingRecorder] | None = None
    ) -> JetStreamTrackingRecorder:
        cls = tracking_recorder_class or self._resolve(
            self.TRACKING_RECORDER_TOPIC, self.tracking_recorder_class
        )
        return cls(self.datastore, self.stream_name(), create=self.env_create_table())

    def process_recorder(self) -> ProcessRecorder:
        cls = self._resolve(self.PROCESS_RECORDER_TOPIC, self.process_recorder_class)
        return cls(self.datastore, self.stream_name(), create=self.env_create_table())

    def _resolve(self, key: str, default: type[T]) -> type[T]:
        topic = self.env.get(key)
        if not topic:
            return default
        cls: type[T] = resolve_topic(topic)
        if not issubclass(cls, default):
            raise ProgrammingError(f"{topic} is not a {default.__name__}")
        return cls

    def close(self) -> None:
        self.datastore.close()


Factory = JetStreamFactory

__all__ = [
    "DatabaseError",
    "Factory",
    "JetStreamAggregateRecorder",
    "JetStreamApplicationRecorder",
    "JetStreamDatastore",
    "JetStreamFactory",
    "JetStreamProcessRecorder",
    "JetStreamSubscription",
    "JetStreamTrackingRecorder",
]
