"""Reading a stream in order from any sequence, in batches, with back-pressure.

This is the read side's hot loop. ``PullSubscription.fetch()`` caps near 30k msg/s; here
pull requests are driven by hand (``$JS.API.CONSUMER.MSG.NEXT``) with a few in flight and
a callback that only appends, which measured 150-200k msg/s on a 2-core machine; that
callback is called straight from nats-py's parser (:mod:`toolkit.nats.direct`), not
through a subscription's queue and task.

The consumer on the server is ephemeral and unacknowledged: the reader's owner keeps its
position (the projection's checkpoint), so there is no second offset that could disagree.
Consumer sequences are checked for gaps; on a gap, a lost request or a vanished consumer
the reader recreates the consumer from the last sequence it delivered, so the batches it
returns are always contiguous in stream order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid

import nats.errors
import orjson
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from toolkit.backoff import raise_if_cancelled
from toolkit.nats.connection import install_header_parser, parse_header_lines
from toolkit.nats.direct import subscribe_direct, unsubscribe
from toolkit.nats.imports import api_subject, jetstream
from toolkit.wire.envelope import MSG_ID

_STATUS = "Status"
_DESCRIPTION = "Description"
CLOSE_WITHIN = 1.0
"""Seconds a closing reader waits to delete its consumer: a courtesy (the server drops an
ephemeral consumer idle for a minute anyway), so a reader stopping while its server is
gone (SIGTERM to a whole process group, the embedded server included) stops at once
rather than after the JetStream request's full timeout."""


class StreamMessage:
    """One message as read from a stream: ``stream``, ``sequence``, ``subject``,
    ``headers`` and ``data``.

    A reader gives its messages' headers as the block it read (:meth:`unparsed`), parsed
    when they are first asked for: a projector asks only for the message id
    (:attr:`msg_id`), which most often is the block's first line alone."""

    __slots__ = ("_block", "_headers", "data", "sequence", "stream", "subject")
    __match_args__ = ("stream", "sequence", "subject", "headers", "data")
    __hash__ = None  # type: ignore[assignment]  # (as a dataclass's: it is mutable)

    def __init__(
        self, stream: str, sequence: int, subject: str, headers: dict[str, str], data: bytes
    ) -> None:
        self.stream = stream
        self.sequence = sequence
        self.subject = subject
        self._headers: dict[str, str] | None = headers
        self._block = b""
        self.data = data

    @classmethod
    def unparsed(
        cls, stream: str, sequence: int, subject: str, block: bytes, data: bytes
    ) -> StreamMessage:
        """A message whose headers are the NATS header ``block`` (after its
        ``NATS/1.0`` line), parsed when asked for as nats-py parses them
        (:func:`~toolkit.nats.connection.parse_header_lines`)."""
        message = cls.__new__(cls)
        message.stream, message.sequence, message.subject = stream, sequence, subject
        message.data, message._headers, message._block = data, None, block
        return message

    @property
    def headers(self) -> dict[str, str]:
        headers = self._headers
        if headers is None:
            headers = self._headers = parse_header_lines(self._block)
            self._block = b""
        return headers

    @headers.setter
    def headers(self, headers: dict[str, str]) -> None:
        self._headers, self._block = headers, b""

    @property
    def msg_id(self) -> str | None:
        """``headers.get("Nats-Msg-Id")``: without parsing headers not parsed yet when
        the block names it once, on its first line (as the relay writes it)."""
        if self._headers is None:
            block = self._block
            if block.startswith(_MSG_ID_LINE) and block.count(_MSG_ID_NAME) == 1:
                end = block.find(b"\r\n")
                value = block[len(_MSG_ID_LINE) : end] if end >= 0 else block[len(_MSG_ID_LINE) :]
                return value.strip().decode("utf-8", "replace")
        return self.headers.get(MSG_ID)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StreamMessage):
            return NotImplemented
        return (self.stream, self.sequence, self.subject, self.headers, self.data) == (
            other.stream, other.sequence, other.subject, other.headers, other.data
        )  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"StreamMessage(stream={self.stream!r}, sequence={self.sequence!r}, "
            f"subject={self.subject!r}, headers={self.headers!r}, data={self.data!r})"
        )


@dataclasses.dataclass
class _StreamMessageFields:
    stream: str
    sequence: int
    subject: str
    headers: dict[str, str]
    data: bytes


# It was a dataclass, and stays one to ``dataclasses`` (``replace``, ``fields``, ``asdict``
# and ``is_dataclass`` read only these), for code written against it.
StreamMessage.__dataclass_fields__ = _StreamMessageFields.__dataclass_fields__  # type: ignore[attr-defined]


_MSG_ID_NAME = MSG_ID.encode()
_MSG_ID_LINE = _MSG_ID_NAME + b":"


class StreamReader:
    """Yields contiguous batches of a stream starting at ``start_sequence``."""

    direct: bool = True
    """Whether its messages are taken straight from nats-py's parser where the client
    allows it (:mod:`toolkit.nats.direct`), rather than through a subscription's callback."""

    def __init__(
        self,
        client: Client,
        stream: str,
        *,
        start_sequence: int = 1,
        batch_size: int = 1000,
        in_flight: int = 2,
        expires: float = 5.0,
        heartbeat: float = 0.5,
        name: str = "reader",
        filter_subjects: list[str] | None = None,
    ) -> None:
        self.client = client
        self.js = jetstream(client)  # a stream of another account: through its import
        self.stream = stream
        self.next_sequence = max(1, start_sequence)
        self.batch_size = batch_size
        self.in_flight = in_flight
        self.expires = expires
        self.heartbeat = heartbeat
        self.name_prefix = name
        self.filter_subjects = filter_subjects
        self._pending: str | None = None
        self._consumer: str | None = None
        self._next = ""  # where pull requests for the consumer go
        self._inbox = client.new_inbox()
        self._sub: Subscription | None = None
        self._buffer: list[StreamMessage] = []
        # Open pull requests, oldest first: reply subject -> [end, last heard], where end
        # is the count of messages received by which this request is served in full.
        self._requests: dict[str, list[float]] = {}
        self._received = 0  # messages received from the current consumer
        self._last_data = time.monotonic()
        self._expected_consumer_seq = 1
        self._reset_needed = False
        self._arrived = asyncio.Event()
        self._next_request = 0

    @property
    def pending(self) -> int | None:
        """Messages left in the stream after the last one delivered, as the server said."""
        return None if self._pending is None else int(self._pending)

    @property
    def asked_for(self) -> int:
        """Messages requested from the server and not received yet: with what is
        buffered, never more than ``batch_size * (in_flight + 1)``."""
        end = max((r[0] for r in self._requests.values()), default=self._received)
        return int(max(0, end - self._received))

    async def __aenter__(self) -> StreamReader:
        await self.open()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def open(self) -> None:
        install_header_parser(self.client)
        self._sub = await subscribe_direct(
            self.client, f"{self._inbox}.*", self._on_message, direct=self.direct
        )
        await self._create_consumer()
        await self._top_up()

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await unsubscribe(self.client, self._sub)
            self._sub = None
        await self._delete_consumer(within=CLOSE_WITHIN)

    async def next_batch(self, max_wait: float | None = None) -> list[StreamMessage]:
        """The messages that arrived since the last call, in order; waits up to ``max_wait``
        for at least one (returns an empty list when none came)."""
        loop = asyncio.get_running_loop()
        deadline = None if max_wait is None else loop.time() + max_wait
        while not self._buffer:
            await self._keep_requests_alive()
            # Wake at least every heartbeat interval to notice requests gone silent.
            wait = self.heartbeat
            if deadline is not None:
                wait = min(wait, deadline - loop.time())
                if wait <= 0:
                    break
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):  # (not wait_for: it may drop a cancel)
                    await self._arrived.wait()
        raise_if_cancelled()  # (one a request of nats-py's dropped: backoff's docstring)
        batch, self._buffer = self._buffer, []
        if batch:
            self.next_sequence = batch[-1].sequence + 1
        await self._keep_requests_alive()
        return batch

    async def _keep_requests_alive(self) -> None:
        if self.client.is_closed:  # for good (nats-py reconnects otherwise): say so
            raise nats.errors.ConnectionClosedError
        if self._reset_needed:
            await self._reset()
        self._drop_silent_requests()
        await self._top_up()

    # -- server side consumer -------------------------------------------------------------

    async def _create_consumer(self) -> None:
        self._consumer = f"{self.name_prefix}-{uuid.uuid4().hex[:12]}"
        config = ConsumerConfig(
            name=self._consumer,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.next_sequence,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=60.0,
            mem_storage=True,
            num_replicas=1,
            max_waiting=max(8, self.in_flight * 2),
        )
        if self.filter_subjects:
            config.filter_subjects = self.filter_subjects
        await self.js.add_consumer(self.stream, config)
        self._next = api_subject(
            self.client, f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self._consumer}"
        )
        self._expected_consumer_seq = 1
        self._requests.clear()
        self._received = 0
        self._reset_needed = False

    async def _delete_consumer(self, within: float | None = None) -> None:
        if self._consumer is not None and self.client.is_connected:
            with contextlib.suppress(NotFoundError, Exception):
                await asyncio.wait_for(self.js.delete_consumer(self.stream, self._consumer), within)
        self._consumer = None

    async def _reset(self) -> None:
        """Start over from the next undelivered sequence with a fresh consumer."""
        buffered = self._buffer[-1].sequence + 1 if self._buffer else self.next_sequence
        self.next_sequence = buffered
        await self._delete_consumer()
        await self._create_consumer()

    # -- pull requests --------------------------------------------------------------------

    async def _top_up(self) -> None:
        if self._consumer is None or not self.client.is_connected:
            return
        requests = self._requests
        while requests and self._received >= next(iter(requests.values()))[0]:
            del requests[next(iter(requests))]  # served in full
        end = max((r[0] for r in requests.values()), default=self._received)
        outstanding = end - self._received
        limit = self.batch_size * (self.in_flight + 1)
        while (
            len(requests) < self.in_flight
            and outstanding + len(self._buffer) + self.batch_size <= limit
        ):
            reply = f"{self._inbox}.{self._next_request}"
            self._next_request += 1
            end = max(end, self._received) + self.batch_size
            requests[reply] = [end, time.monotonic()]
            outstanding += self.batch_size
            request = orjson.dumps(
                {
                    "batch": self.batch_size,
                    "expires": int(self.expires * 1_000_000_000),
                    "idle_heartbeat": int(self.heartbeat * 1_000_000_000),
                }
            )
            await self.client.publish(self._next, request, reply=reply)

    def _drop_silent_requests(self) -> None:
        """A pending request hears from the server at least every heartbeat. One that
        went silent (its consumer was deleted, a reconnect lost it) is dropped so that a
        new one takes its place; if the consumer is gone, that one is answered 503 and
        the reader starts over with a new consumer."""
        deadline = time.monotonic() - 3 * self.heartbeat
        if self._last_data >= deadline:
            return  # messages are flowing
        for reply, (_, heard) in list(self._requests.items()):
            if heard < deadline:
                self._forget(reply)

    def _forget(self, reply: str) -> None:
        """Drop a request that will get no more messages; the ones after it move up by
        what it did not get."""
        request = self._requests.pop(reply, None)
        if request is None:
            return
        end = request[0]
        shortfall = end - max(self._received, end - self.batch_size)
        if shortfall > 0:
            for later in self._requests.values():
                if later[0] > end:
                    later[0] -= shortfall

    def _on_message(
        self,
        subject: str,
        reply: str,
        data: bytes,
        headers: dict[str, str] | None,
        block: bytes | None,
    ) -> None:
        if not reply and block is not None:
            headers, block = parse_header_lines(block) or None, None
        if headers is not None and _STATUS in headers and not reply:
            status = headers[_STATUS]
            if status == "100":  # idle heartbeat: the request is alive
                request = self._requests.get(subject)
                if request is not None:
                    request[1] = time.monotonic()
                return
            if status in ("404", "408"):  # request done: no messages, or it expired
                self._forget(subject)
            elif status == "409" or status == "503":  # consumer deleted, leader changed, gone
                self._forget(subject)
                self._reset_needed = True
            if not self._buffer:
                self._arrived.set()  # let next_batch() act on it
            return
        # $JS.ACK.<stream>.<consumer>.<delivered>.<seq>.<consumer seq>.<time>.<pending>, or
        # with <domain>.<account hash> after ACK and a random token at the end.
        tokens = reply.split(".")
        if len(tokens) == 9:
            consumer, sequence, consumer_seq, pending = tokens[3], tokens[5], tokens[6], tokens[8]
        else:
            consumer, sequence, consumer_seq, pending = tokens[5], tokens[7], tokens[8], tokens[10]
        if consumer != self._consumer:
            return  # still in flight from a consumer this reader replaced
        if int(consumer_seq) != self._expected_consumer_seq or self._reset_needed:
            self._reset_needed = True  # a gap: drop the rest and start over from here
            return
        self._expected_consumer_seq += 1
        self._pending = pending
        # A message carries its own subject, not the request's reply subject; the server
        # serves requests first-in first-out, so counting them tells which are served.
        self._received += 1
        self._last_data = time.monotonic()
        self._buffer.append(
            StreamMessage(self.stream, int(sequence), subject, headers or {}, data)
            if block is None
            else StreamMessage.unparsed(self.stream, int(sequence), subject, block, data)
        )
        self._arrived.set()
