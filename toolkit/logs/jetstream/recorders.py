"""The JetStream log's recorders: eventsourcing's aggregate, application, tracking and
process recorders over one stream (see :mod:`toolkit.logs.jetstream.stream`).

Notification ids are the stream sequences. The log stream denies deletes and purges, so
the sequence never has gaps in an application's log (a process application's log has
gaps where its tracking records are). Notifications are read with batched direct gets
filtered to ``<name>_log.*``; ``topics`` are filtered here, since the topic is in the
body. ``subscribe()`` follows the log live with an ordered push consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
from collections.abc import Sequence
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    Notification,
    OperationalError,
    ProcessRecorder,
    StoredEvent,
    Subscription,
    Tracking,
    TrackingRecorder,
)
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from toolkit.logs.fence import FencedTracking, Move
from toolkit.logs.jetstream.messages import Entry, decode_event, decode_version
from toolkit.logs.jetstream.stream import READ_CHUNK, JetStreamRecorder, LastRecorded
from toolkit.wire import encode_token


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
            want = limit - len(found) if not topics else max(limit - len(found), READ_CHUNK)
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
        version, topic, state = decode_event(msg.data)
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
            version, topic, state = decode_event(msg.data)
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

    fences_tracking: ClassVar[bool] = True
    """A :class:`~toolkit.logs.fence.FencedTracking` is stored as a fence: each of its
    moves only from the position its writer expected (see :mod:`toolkit.logs.jetstream.stream`)."""

    def _tracking(self, tracking: Tracking) -> list[Entry]:
        """The tracking record's messages: one, or one per move of a fenced record."""
        if isinstance(tracking, FencedTracking):
            return [self._entry(m.name, m.position, m) for m in tracking.moves]
        return [self._entry(tracking.application_name, tracking.notification_id)]

    def _entry(self, name: str, position: int, fence: Move | None = None) -> Entry:
        subject = self.tracking_subject(name)
        return Entry(subject, position, b"%d \n" % position, f"tracking of {name}", fence)

    def insert_tracking(self, tracking: Tracking) -> None:
        self.datastore.call(self._append(self._tracking(tracking)))

    def max_tracking_id(self, application_name: str) -> int | None:
        return self.datastore.call(self._max_tracking_id(application_name))

    async def _max_tracking_id(self, application_name: str) -> int | None:
        subject = self.tracking_subject(application_name)
        msg = await self._last(subject)
        if msg is None:
            return None
        version = decode_version(msg.data)
        self._remember(subject, LastRecorded(version, int(msg.headers["Nats-Sequence"])))  # type: ignore[index]
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
            entries.extend(self._tracking(tracking))
        if not entries:
            return []
        sequences = self.datastore.call(self._append(entries))
        return sequences[: len(stored_events)]
