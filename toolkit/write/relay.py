"""The relay: carries a context's log onto its stream, in log order, exactly once.

It follows the log by notification id (an outbox with no extra table) and publishes each
published-language event with pipelined acknowledgements. Exactly once and in order hold
because:

- the resume position is read from the stream itself (the log position in the header of
  its last message), so there is no side table that could disagree with it;
- every publish carries ``Nats-Expected-Last-Sequence`` (and, after the first of a
  start, ``Nats-Expected-Last-Msg-Id``): JetStream stores message n+1 only right after
  message n, so a pipeline that fails midway, or that another publisher's message gets
  into, leaves a prefix, never a gap, and a second relay running by mistake is refused
  instead of interleaving;
- every publish carries ``Nats-Msg-Id`` built from the log position, so a retried publish
  inside the duplicate window is dropped by JetStream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.client import Client

from toolkit import tracing
from toolkit.backoff import Backoff
from toolkit.errors import RelayError
from toolkit.nats.connection import Connection, OnConnection, on_permission_denied
from toolkit.nats.streams import StreamSpec
from toolkit.write import wakes
from toolkit.write.context import BoundedContext
from toolkit.write.outbox import Outbox
from toolkit.write.published import OutgoingMessage
from toolkit.write.publishing import AckWindow, folds_tail_check
from toolkit.write.resume import check_tail, lost, resume_point
from toolkit.write.watch import LogWatcher

log = logging.getLogger(__name__)
_UNTRACED = contextlib.nullcontext()


@dataclass
class RelayStats:
    published: int = 0
    position: int = 0
    """Log position of the last event known to be on the stream (or skipped)."""
    stream_sequence: int = 0
    restarts: int = 0
    """Times the relay started over after the server went away or stopped answering."""
    republished_from: int | None = None
    """Log position after which events lost by the stream were published again."""


class Relay(OnConnection):
    """Carries one context's log onto its stream. Run it in the context's process (it
    wakes right after each save, and takes the messages the save built instead of
    reading them back: see :mod:`toolkit.write.outbox`) or on its own (it polls the log every
    ``poll_interval``, and on PostgreSQL also wakes on the log's NOTIFY)."""

    def __init__(
        self,
        context: BoundedContext[Any],
        client: Client | Connection,
        *,
        stream: StreamSpec | None = None,
        batch_size: int = 1000,
        window: int = 10_000,
        ack_every: int = 200,
        ack_timeout: float = 10.0,
        poll_interval: float = 0.25,
        retry_delay: float = 0.25,
        max_retry_delay: float = 5.0,
        handoff_limit: int = 10_000,
    ) -> None:
        self.context = context
        self.connection = Connection.of(client)
        """Each attempt takes its current client: one the server closed is replaced."""
        self.stream = stream or StreamSpec(context.name)
        self.batch_size = batch_size
        if window < 1 or ack_every < 1:
            raise ValueError(f"window and ack_every must be positive, not {window}, {ack_every}")
        self.window_size = window
        # A window full of messages that asked for nothing would wait for ever.
        self.ack_every = min(ack_every, max(1, window // 2))
        self.outbox = Outbox(context, handoff_limit=handoff_limit)
        self.ack_timeout = ack_timeout
        self.poll_interval = poll_interval
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.stats = RelayStats()
        self.idle = False
        """True while the relay has carried everything and waits for the log to grow."""
        self.running = False
        """True from when the relay has found where to go on until it stops or starts over."""
        self._wake = asyncio.Event()
        self._waking = False
        """Whether a wake is on its way to the event loop (saves need not send another)."""
        self._epoch = 0
        """Non-zero once messages were lost: part of the message ids (see wire.message_id)."""
        self._last_own = 0
        """The sequence of the relay's last message on the stream when it resumed."""

    async def resume_position(self) -> tuple[int, int]:
        """(stream sequence to publish after, log position of the relay's last message on
        the stream), checked against the log: see :func:`toolkit.write.resume.resume_point`."""
        point = await resume_point(self.js, self.stream, self.context)
        self._last_own = point.own
        return point.sequence, point.position

    def lag(self) -> int:
        """Log events not yet carried onto the stream (log head minus last relayed)."""
        head = self.context.recorder.max_notification_id() or 0
        return max(0, head - self.stats.position)

    async def run(
        self, stop: asyncio.Event | None = None, *, until_head: bool = False
    ) -> RelayStats:
        """Relay until ``stop`` is set (or, with ``until_head``, until the log head as it
        was when called is on the stream).

        When the server goes away, stops answering or closes the connection (which its
        :class:`~toolkit.nats.connection.Connection` replaces), the relay says so in the log
        and starts over from the stream's last message once it is back, with back-off;
        errors that waiting cannot mend (a stream written from another log) are raised.
        """
        with self.outbox.handing_over():
            return await self._run(stop or asyncio.Event(), until_head)

    async def _run(self, stop: asyncio.Event, until_head: bool) -> RelayStats:
        target = (self.context.recorder.max_notification_id() or 0) if until_head else None
        backoff = Backoff(self.retry_delay, self.max_retry_delay)
        while True:
            carried = self.stats.published
            try:
                return await self._relay(stop, target)
            except (RelayError, nats.errors.Error, TimeoutError, OSError) as exc:
                if isinstance(exc, RelayError) and not exc.transient:
                    raise
                if (
                    isinstance(exc, RelayError)
                    and exc.lost
                    and await lost(self.js, self.stream.name, self.context, exc)
                ):
                    self._epoch = time.time_ns() // 1000  # ids JetStream has not seen
                    self.stats.republished_from = self.stats.position
                self.stats.restarts += 1
                if self.stats.published > carried:  # this attempt got events across
                    backoff.reset()
                log.warning(
                    "relay %s: %s; starting over from the stream in %.1fs",
                    self.context.name,
                    str(exc) or type(exc).__name__,
                    backoff.delay,
                )
                if await backoff.wait(stop):
                    return self.stats

    def _span(self, messages: list[OutgoingMessage]) -> contextlib.AbstractContextManager[object]:
        """With spans on, a page's publishing is a span when one of its events is traced:
        a child of the first one's traceparent, linked to the others'."""
        return tracing.batch_span(
            f"{self.stream.name} publish",
            (message.traceparent for message in messages),
            kind="producer",
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": self.stream.name,
                "messaging.batch.message_count": len(messages),
            },
        )

    async def _relay(self, stop: asyncio.Event, target: int | None) -> RelayStats:
        loop = asyncio.get_running_loop()
        client = self.client  # first: ConnectError if closed for good, before registering

        def wake_now() -> None:
            # (one call into the loop at a time, not one a save: each makes the loop
            # thread wake up and take the GIL from the threads saving)
            if not self._waking:
                self._waking = True
                loop.call_soon_threadsafe(woken)

        def wake_soon() -> None:  # (a command's, postponed until it handed back)
            if asyncio._get_running_loop() is loop:
                woken()
            else:
                wake_now()

        def wake(_: object) -> None:
            wakes.wake(wake_soon, wake_now)

        def woken() -> None:
            self._waking = False  # (first: a save handing over after this wakes it again)
            self._wake.set()

        def log_moved() -> None:  # written by another process
            self._log_moved = True
            wake(None)

        self._log_moved = True
        self._waking = False
        remove = self.context.on_saved(wake)
        self.outbox.wake = lambda: wake(None)  # (a group commit's page, handed over)
        window_box: list[AckWindow] = []

        def denied(reason: str) -> None:
            for window in window_box:
                window.deny(reason)

        stop_listening = on_permission_denied(client, denied)
        watcher = LogWatcher(self.context.recorder, log_moved)
        watcher.start()
        stopping = asyncio.create_task(stop.wait())
        stopping.add_done_callback(lambda _: self._wake.set())
        window = AckWindow(
            client,
            self.context.name,
            self.stream.name,
            self.window_size,
            self.ack_every,
            self.ack_timeout,
            self._epoch,
        )
        window_box.append(window)
        try:
            first_sequence, position = await self.resume_position()
            await window.open(first_sequence, position)
            self.running = True
            confirmed = self.stats.stream_sequence
            if 0 < confirmed < first_sequence:  # stored by the last attempt, ack lost
                self.stats.published += first_sequence - confirmed
            published_before = self.stats.published

            def settle() -> None:  # what is known to be on the stream
                self.stats.position = window.confirmed_position if window.unconfirmed else position
                self.stats.stream_sequence = window.confirmed_sequence
                self.stats.published = published_before + window.confirmed_sequence - first_sequence

            settle()

            def acked() -> None:  # taken in while resting: settled, a failure wakes it
                settle()
                if window.error is not None:
                    woken()
                elif not window.unconfirmed:
                    self.idle = True  # (everything is on the stream)

            recorder = self.context.recorder
            # The first message goes alone: once it is stored right after the sequence
            # and position read from the stream, those two are known to belong together,
            # and the pipeline may chain on it. (A publish of an earlier attempt may still
            # arrive after a reconnect and move the stream on between the two reads.)
            anchored = False
            unchecked = False  # the stream may have lost its tail since the relay looked
            polled = False
            fold = folds_tail_check(client)
            outbox = self.outbox
            head_read = loop.time()
            head = 0  # the log's head as last known
            owed = False  # a turn of the event loop, since a flush that gave none
            while not stop.is_set():
                self._wake.clear()  # before reading: a save from now on wakes the wait below
                if unchecked and (polled or not fold or window.last_subject is None):
                    own = window.last_sequence if window.last_sequence > first_sequence else 0
                    await check_tail(self.js, self.stream.name, own or self._last_own)
                    unchecked = False
                if (
                    self._log_moved
                    or not outbox.takes_saves
                    or loop.time() - head_read >= self.poll_interval
                ):
                    self._log_moved = False
                    head_read = loop.time()
                    head = recorder.max_notification_id() or 0
                else:  # woken by saves of this process, which the outbox saw commit:
                    head = max(head, outbox.saved_up_to)  # no read of the log
                progressed = head > position
                if progressed and unchecked:
                    window.check_tail = True  # the next message checks it
                    unchecked = False
                if progressed:
                    if owed:  # (its other tasks run, the flush's acknowledgements come)
                        owed = False
                        await asyncio.sleep(0)
                    page = outbox.read(position, head, self.batch_size, wait=True)
                    if page.position == position:
                        # The save after it, committed by this process (in the group of
                        # the one that woke the relay), is on its way to hand over: send
                        # what was read, and read again once a save has handed over.
                        await window.flush()
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(outbox.patience):
                                await self._wake.wait()
                        continue
                    with self._span(page.messages) if tracing.enabled() else _UNTRACED:
                        offer = window.offer
                        for message in page.messages:
                            if not anchored:
                                await window.publish(message)
                                await window.drain()
                                anchored = True
                            elif not offer(message):
                                await window.publish(message)
                    position = page.position
                    if position >= head:  # all known is read: send it now, not once the
                        await window.flush()  # log rests (saves keep coming, grouped)
                        owed = True  # (where nothing more is known, the drain yields)
                caught_up = target is not None and position >= target
                resting = None  # (seconds until an acknowledgement waited for is overdue)
                if window.unconfirmed and (not progressed or caught_up):
                    # At rest, the acknowledgements are not waited for: they settle as
                    # they come (one request at a time, a wait each cost the relay a turn)
                    if not caught_up:
                        resting = await window.rest()
                    if resting is None:  # (failed, overdue, or carried to the target)
                        await window.drain()
                    owed = False
                settle()
                if caught_up:
                    break
                if not progressed:
                    owed = False
                    self.idle = not window.unconfirmed  # (else once acknowledged: acked)
                    polled = False
                    window.on_ack = acked if resting is not None else None
                    try:  # (a timeout scope, not wait_for's task: 11-13 µs a wait, not 17-21)
                        async with asyncio.timeout(
                            self.poll_interval
                            if resting is None
                            else min(self.poll_interval, resting)
                        ):
                            await self._wake.wait()
                    except TimeoutError:
                        polled = self._log_moved = True
                    window.on_ack = None
                    self.idle = False
                    unchecked = True
            await window.drain()
            settle()
        finally:
            self.running = False
            stopping.cancel()
            watcher.stop()
            remove()
            self.outbox.wake = None
            stop_listening()
            await window.close()
        return self.stats
