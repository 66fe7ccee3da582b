"""What every recorder of the JetStream log shares: its stream, ids on subjects, reads,
and atomic appends under optimistic concurrency.

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

Fenced tracking records (:class:`~toolkit.logs.fence.FencedTracking`). A tracking record
that moves only from where its writer left it carries the position expected
(:attr:`Entry.fence`): before publishing, the subject's last recorded version must be that
position (the subject empty for None), else the save raises ``IntegrityError`` and nothing
is sent. The knowledge checked is the recorder's, read again when it does not hold; since
the publish itself is conditional on the subject's last sequence, a record moved meanwhile
makes the server refuse the save, the knowledge is read again and the fence checked again:
a compare-and-set. The recorder remembers a record only once the server has stored it.

Reads. One aggregate's events come from batched direct gets by subject (``allow_direct``):
one request, answered with the aggregate's messages in order; the last event alone (a
snapshot, ``desc=True, limit=1``) is one direct get by last subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence
from typing import NamedTuple
from uuid import UUID

import nats.errors
import orjson
from eventsourcing.persistence import (
    DataError,
    IntegrityError,
    OperationalError,
    ProgrammingError,
    Recorder,
    StoredEvent,
)
from nats.aio.msg import Msg
from nats.js.api import DiscardPolicy, RetentionPolicy, StreamConfig
from nats.js.errors import NotFoundError

from toolkit.backoff import Backoff
from toolkit.logs.fence import refusal
from toolkit.logs.jetstream.datastore import JetStreamDatastore
from toolkit.logs.jetstream.messages import (
    BATCH_COMMIT,
    BATCH_ID,
    BATCH_SEQUENCE,
    EXPECTED_LAST_SUBJECT_SEQUENCE,
    MAX_BATCH,
    TRY_AGAIN,
    WRONG_LAST_SEQUENCE,
    Entry,
    decode_event,
    decode_version,
    encode_event,
    read_ack,
    status_of,
)
from toolkit.wire import decode_token, encode_token

STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,200}")
"""What JetStream takes as a stream name."""
READ_CHUNK = 1000
"""Messages asked for in one batched direct get."""
_NOTHING = -(2**63)
"""The version of an aggregate that has no events."""
_LAST_RECORDED_KEPT = 100_000
"""Subjects whose last recorded (version, sequence) a recorder remembers."""


class LastRecorded(NamedTuple):
    """The last record the recorder knows on a subject (an aggregate's last event, an
    application's last tracking record): its version, and the stream sequence that a
    save after it expects the subject to end at."""

    version: int
    sequence: int


class JetStreamRecorder(Recorder):
    """What the recorders share: the stream, its provisioning, reads and atomic writes."""

    def __init__(
        self, datastore: JetStreamDatastore, stream_name: str, *, create: bool = True
    ) -> None:
        if not STREAM_NAME.fullmatch(stream_name):
            raise ProgrammingError(f"invalid JetStream stream name {stream_name!r}")
        self.datastore = datastore
        self.stream_name = stream_name
        self.prefix = stream_name + "."
        self.events_filter = stream_name + ".*"
        self._direct = f"$JS.API.DIRECT.GET.{stream_name}"
        self._last_recorded: dict[str, LastRecorded] = {}
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
        status = status_of(msg)
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
        status = status_of(end)
        if status == "404":
            return [], 0
        if status != "204":
            raise OperationalError(
                f"batched direct get on {self.stream_name} answered {status}: "
                f"{(end.headers or {}).get('Description', '')}"
            )
        return replies, int((end.headers or {})["Nats-Last-Sequence"])

    def _remember(self, subject: str, last: LastRecorded) -> None:
        known = self._last_recorded
        known.pop(subject, None)
        known[subject] = last
        if len(known) > _LAST_RECORDED_KEPT:
            del known[next(iter(known))]

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
                self._remember(subject, LastRecorded(_NOTHING, 0))
                return []
            version, topic, state = decode_event(msg.data)
            self._remember(subject, LastRecorded(version, int(msg.headers["Nats-Sequence"])))  # type: ignore[index]
            if gt is not None and version <= gt:
                return []
            return [StoredEvent(originator_id, version, topic, state)]
        events: list[StoredEvent] = []
        if limit == 0:
            return events
        ascending_limit = None if desc else limit
        start, tail = 1, LastRecorded(_NOTHING, 0)  # the last message seen: version, sequence
        while True:
            want = READ_CHUNK
            if ascending_limit is not None and gt is None:
                want = min(want, ascending_limit - len(events))
            msgs, last = await self._range(subject, start, want, headers=False)
            if not msgs:  # the previous chunk ended with the aggregate's last event
                self._remember(subject, tail)
                break
            enough = False
            for msg in msgs:
                version, topic, state = decode_event(msg.data)
                if lte is not None and version > lte:
                    enough = True
                    break
                if gt is None or version > gt:
                    events.append(StoredEvent(originator_id, version, topic, state))
                    if ascending_limit is not None and len(events) >= ascending_limit:
                        enough = True
                        break
            tail = LastRecorded(decode_version(msgs[-1].data), last)
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
                self._remember(subject, LastRecorded(_NOTHING, 0))
            else:
                sequence = int(msg.headers["Nats-Sequence"])  # type: ignore[index]
                self._remember(subject, LastRecorded(decode_version(msg.data), sequence))

    def _found(self, subject: str) -> int | None:
        """The last version recorded on ``subject`` as the recorder knows it (None: no
        record, or none known)."""
        last = self._last_recorded.get(subject)
        return None if last is None or last.version == _NOTHING else last.version

    async def _expected(self, firsts: dict[str, Entry], known: bool) -> dict[str, int]:
        """The last sequence each subject must have for the save to hold; raises
        IntegrityError when a subject already has the version being written (or later),
        or a fenced record is not where its writer expected it."""
        if not known:
            known_subjects = self._last_recorded
            unknown = [
                s
                for s, e in firsts.items()
                if s not in known_subjects
                and (e.version > 1 or (e.fence is not None and e.fence.expected is not None))
            ]
            if unknown:
                await self._refresh(unknown)
            stale = [  # known from before, perhaps moved since: a fence is not refused on that
                s
                for s, e in firsts.items()
                if e.fence is not None and s not in unknown and self._found(s) != e.fence.expected
            ]
            if stale:
                await self._refresh(stale)
        expected: dict[str, int] = {}
        for subject, entry in firsts.items():
            if entry.fence is not None and self._found(subject) != entry.fence.expected:
                raise refusal(entry.fence, self._found(subject))
            last = self._last_recorded.get(subject)
            if last is None:
                expected[subject] = 0  # presumably new; JetStream says if not
            elif last.version >= entry.version:
                raise IntegrityError(
                    f"{entry.label} already has version {last.version} in stream "
                    f"{self.stream_name}: cannot record version {entry.version}"
                )
            else:
                expected[subject] = last.sequence
        return expected

    async def _append(self, entries: list[Entry]) -> list[int]:
        """Store ``entries`` atomically, each subject's first after the last the recorder
        knows of it; returns their stream sequences."""
        if len(entries) > MAX_BATCH:
            raise DataError(
                f"a save of {len(entries)} messages is more than JetStream stores atomically "
                f"({MAX_BATCH}): save fewer events at once"
            )
        firsts: dict[str, Entry] = {}
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
            elif entry.fence is not None and entry.fence.expected != entries[previous].version:
                raise refusal(entry.fence, entries[previous].version)  # (moved twice in one save)
            lasts[entry.subject] = index
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.datastore.timeout
        backoff = Backoff(first=0.002, maximum=0.1)  # one save's retries: starts afresh each save
        known = False
        while True:
            expected = await self._expected(firsts, known)
            code, last, description = await self._publish(entries, expected)
            if code is None:
                first = last - len(entries) + 1
                for subject, index in lasts.items():
                    self._remember(subject, LastRecorded(entries[index].version, first + index))
                return list(range(first, last + 1))
            if code in WRONG_LAST_SEQUENCE:
                await self._refresh(list(firsts))
                known = True  # raise IntegrityError now if it is a conflict
            elif code in TRY_AGAIN and loop.time() + backoff.delay < deadline:
                self.resent += 1
                await backoff.wait()
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
        self, entries: list[Entry], expected: dict[str, int]
    ) -> tuple[int | None, int, str]:
        """(error code or None, last sequence, description)."""
        datastore = self.datastore
        replies: list[asyncio.Future[list[Msg]]] = []
        try:
            if len(entries) == 1:
                entry = entries[0]
                headers = {EXPECTED_LAST_SUBJECT_SEQUENCE: str(expected[entry.subject])}
                answer = await (await datastore.send(entry.subject, entry.payload, headers))
                sequence, code, description = read_ack(answer[0])
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
        sequence, code, description = read_ack(commit[0])
        if code is not None and isinstance(first, list):
            _, first_code, first_description = read_ack(first[0])
            if first_code is not None:
                code, description = first_code, first_description  # the first says why
        return code, sequence, description

    def _events(self, stored_events: Sequence[StoredEvent]) -> list[Entry]:
        return [
            Entry(
                self.subject(event.originator_id),
                event.originator_version,
                encode_event(event.originator_version, event.topic, event.state),
                f"aggregate {event.originator_id}",
            )
            for event in stored_events
        ]
