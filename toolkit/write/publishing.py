"""The relay's publishing: chained, pipelined, its protocol frames written by itself.

Every message carries ``Nats-Expected-Last-Sequence`` and (but the first of a start) the
id of the message before it, so JetStream stores message n only right after message
n-1, and an acknowledgement vouches for every message before it: only one message in
``ack_every`` asks for one (see :class:`AckWindow`). The relay builds the subjects and
headers itself, safe by construction (checked names, encoded tokens, digits), so it
writes their HPUB frames into nats-py's buffer in runs instead of calling its publish
for each message, with nats-py's own checks of the connection and its flusher.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable

import nats.errors
import orjson
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.aio.transport import TcpTransport

from toolkit import wire
from toolkit.errors import RelayError
from toolkit.nats.direct import subscribe_direct, unsubscribe
from toolkit.write.published import OutgoingMessage

EXPECTED_LAST_SUBJECT_SEQUENCE = wire.EXPECTED_LAST_SUBJECT_SEQUENCE
EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT = wire.EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT


def folds_tail_check(client: Client) -> bool:
    """Whether the server checks the last sequence on a subject a message names (2.11
    on); an older one would check it on the message's own subject, and refuse it."""
    version = client.connected_server_version
    try:
        return (version.major, version.minor) >= (2, 11)
    except Exception:  # a version nats-py cannot parse
        return False


def _writes_frames(client: Client) -> bool:
    """Whether the relay may write its messages' protocol frames into nats-py's buffer
    itself (its publish costs some 4 µs a message in Python: checking subject and
    headers the relay builds safe, a frame and a wake of the flusher each): when the
    client has the buffer of the nats-py versions known, and nobody replaced its
    publish (an instrumented client is published to through it)."""
    return (
        type(client).publish is Client.publish
        and "publish" not in vars(client)
        and all(
            hasattr(client, name)
            for name in (
                "_send_command", "_flush_pending", "_flush_queue", "_pending_data_size",
                "_max_pending_size", "stats", "max_payload", "is_draining_pubs",
                "_pending", "_transport",
            )
        )
    )  # fmt: skip


def _write_now(client: Client, data: bytes) -> bool:
    """Write ``data``, after whatever nats-py's buffer holds, to the socket at once, as
    nats-py's flusher would (False: not done, leave it to the flusher). The flusher
    writes on a later turn of the event loop, and in a process whose threads run
    commands each turn gives the GIL up and waits to get it back: at 1,000 commands/s in
    40 threads, from the relay's write to the socket's took 0.8 ms at the median and
    9 ms at p99 (issue 23). Done only on a TCP connection that is up and whose socket
    took everything written so far; else the flusher writes it, which waits for the
    socket to drain. Bytes go out in the order they were given either way."""
    transport = client._transport
    if not client.is_connected or type(transport) is not TcpTransport:
        return False
    writer = transport._io_writer
    if writer is None or writer.transport.is_closing() or writer.transport.get_write_buffer_size():
        return False
    pending = client._pending
    pending.append(data)
    client._pending = []
    client._pending_data_size = 0
    writer.writelines(pending)
    return True


class AckWindow:
    """Publishes with chained, pipelined acknowledgements.

    Every message carries ``Nats-Expected-Last-Sequence`` and, but the first of a start
    (which goes alone), ``Nats-Expected-Last-Msg-Id``, the id of the message sent before
    it, so JetStream stores message n only right after message n-1: an acknowledgement of
    message n vouches for every message before it. (The sequence alone does not hold the
    chain: a message of another publisher getting in shifts the stream by one, so the
    relay's next message is refused and the one after it finds the sequence it expects,
    and is stored: a gap nobody is told of.) So only every ``ack_every``-th message asks
    for one (and the last message before the relay waits), and at most ``size`` messages
    are unconfirmed.
    A refusal of a message that asked for no acknowledgement refuses the rest of the
    chain too, up to the next message that asks, whose answer says so.
    """

    def __init__(
        self,
        client: Client,
        context: str,
        stream: str,
        size: int,
        ack_every: int,
        ack_timeout: float,
        epoch: int,
    ) -> None:
        self.client = client
        self.context = context
        self.stream = stream
        self.epoch = epoch
        self.size = size
        self.ack_every = ack_every
        self.ack_timeout = ack_timeout
        self.inbox = client.new_inbox()
        self.pending: OrderedDict[int, tuple[int, float]] = OrderedDict()
        """Stream sequence -> (log position, time sent) of each message that asked for an
        acknowledgement and has not had it."""
        self.held: OutgoingMessage | None = None
        """The last message given, not yet sent: whether it asks for an acknowledgement
        depends on what comes after it."""
        self.last_sequence = 0  # stream sequence of the last message sent
        self.last_id: str | None = None
        """The message id of the last message sent (None before the first of a start,
        which goes alone): the next one must follow exactly it on the stream."""
        self.unasked = 0  # messages sent since the last one that asked
        self.last_subject: str | None = None  # of the last message sent
        self.check_tail = False
        """Whether the next message also says that the relay's last message is still the
        last on its subject (so still on the stream): the check after a rest, folded
        into the publish that follows it (see :mod:`toolkit.write.relay`)."""
        self.confirmed_position = 0  # log position of the last acknowledged message
        self.confirmed_sequence = 0
        self.error: RelayError | None = None
        self.on_ack: Callable[[], None] | None = None
        """Called when an acknowledgement (or a refusal) has been taken in: the relay's,
        while it rests without waiting for them (see :meth:`rest`)."""
        self._waiter: asyncio.Future[None] | None = None
        self._sub: Subscription | None = None
        self._framed = _writes_frames(client)
        self._run: list[bytes] = []
        """Protocol frames of the messages given since the last one that asked (framed
        publishing): they go to nats-py in one piece with that one."""
        self._run_bytes = 0  # their payloads' bytes, for nats-py's statistics
        self._reply = f" {self.inbox}."

    async def open(self, last_sequence: int, position: int) -> None:
        self.last_sequence = self.confirmed_sequence = last_sequence
        self.confirmed_position = position
        # (straight from nats-py's parser: no Msg, queue and task hop an acknowledgement)
        self._sub = await subscribe_direct(self.client, f"{self.inbox}.*", self._on_ack)

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await unsubscribe(self.client, self._sub)

    @property
    def unconfirmed(self) -> bool:
        return self.held is not None or self.last_sequence > self.confirmed_sequence

    async def publish(self, message: OutgoingMessage) -> None:
        held, self.held = self.held, message
        if held is not None:
            await self._send(held, ask=self.unasked + 1 >= self.ack_every)

    async def flush(self) -> None:
        """Send every message given, the last asking for its acknowledgement, without
        waiting for it: what is known is on its way (acknowledgements settle as they
        come; :meth:`drain` waits for them). It need not give the event loop a turn:
        the relay yields before it reads on (see :mod:`toolkit.write.relay`)."""
        held, self.held = self.held, None
        if held is not None:
            await self._send(held, ask=True, last=True)
        await self._write()

    async def drain(self) -> None:
        """Wait until every message given is acknowledged (or raise why not)."""
        held, self.held = self.held, None
        if held is not None:
            await self._send(held, ask=True)
        await self._write()
        while self.pending:
            await self._wait()
        self._raise_if_failed()

    async def rest(self) -> float | None:
        """Send every message given, as :meth:`flush`, for the relay to rest without
        waiting for their acknowledgements (they settle as they come): the seconds left
        until the oldest one outstanding is overdue, or None when the relay is to
        :meth:`drain` instead (something failed, one is overdue, none is outstanding)."""
        await self.flush()
        if self.error is not None or not self.pending:
            return None
        oldest = next(iter(self.pending.values()))[1]
        remaining = oldest + self.ack_timeout - time.monotonic()
        return remaining if remaining > 0 else None

    def offer(self, message: OutgoingMessage) -> bool:
        """:meth:`publish` without awaiting, where that needs no wait: the message given
        before it joins the run of frames (it asks for no acknowledgement, the window
        has room, nothing failed). False: nothing was done, call :meth:`publish`."""
        held = self.held
        if held is None:
            self.held = message
            return True
        if (
            not self._framed
            or self.error is not None
            or self.unasked + 1 >= self.ack_every
            or self.last_sequence - self.confirmed_sequence >= self.size
        ):
            return False
        self.held = message
        self._frame(held, ask=False)
        return True

    async def _send(self, message: OutgoingMessage, *, ask: bool, last: bool = False) -> None:
        """Send ``message`` (``ask``: asking for its acknowledgement); ``last``: the last
        of what the relay knows of, which it then waits on (it yields then), so the
        event loop need not be given a turn here when the run went to the socket."""
        if self.last_sequence - self.confirmed_sequence >= self.size:
            await self._write()  # what waits here asked for its acknowledgement already
            while self.last_sequence - self.confirmed_sequence >= self.size:
                await self._wait()
        self._raise_if_failed()
        if self._framed:
            self._frame(message, ask=ask)
            if not ask:
                return
            if await self._write() and last:
                return
        else:
            tail_subject = self.last_subject if self.check_tail else None
            self.check_tail = False
            msg_id, last_id, expected, sequence = self._advance(message, ask)
            headers = {wire.MSG_ID: msg_id, wire.EXPECTED_LAST_SEQUENCE: str(expected)}
            if last_id is not None:
                headers[wire.EXPECTED_LAST_MSG_ID] = last_id
            if tail_subject is not None:
                headers[EXPECTED_LAST_SUBJECT_SEQUENCE] = str(expected)
                headers[EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT] = tail_subject
            reply = f"{self.inbox}.{sequence}" if ask else ""
            await self._write()  # (after the frames before it)
            await self.client.publish(message.subject, message.body, reply, headers)
        if ask:
            # Let nats-py's flusher write what is buffered, so the server stores this run
            # while the relay builds the next one (and the event loop's other tasks run).
            await asyncio.sleep(0)

    def _advance(self, message: OutgoingMessage, ask: bool) -> tuple[str, str | None, int, int]:
        """The chain moves on by ``message``: (its message id, the id of the message
        before it, the stream sequence it expects last, its own)."""
        position = message.log_position
        msg_id = self.message_id(position) if self.epoch else message.headers[wire.MSG_ID]
        last_id, self.last_id = self.last_id, msg_id
        expected = self.last_sequence
        self.last_sequence = sequence = expected + 1
        if ask:
            self.unasked = 0
            self.pending[sequence] = (position, time.monotonic())
        else:
            self.unasked += 1
        self.last_subject = message.subject
        return msg_id, last_id, expected, sequence

    def _frame(self, message: OutgoingMessage, *, ask: bool) -> None:
        """Add ``message``'s protocol frame to the run (see :meth:`_write`)."""
        body = message.body
        if len(body) > self.client.max_payload:
            raise nats.errors.MaxPayloadError
        tail_subject = self.last_subject if self.check_tail else None
        self.check_tail = False
        msg_id, last_id, expected, sequence = self._advance(message, ask)
        # nats-py's HPUB frame, as its publish writes it for these headers: names and
        # numbers, ASCII without spaces, so lengths in characters are lengths in bytes.
        # (Subjects are a context's checked names and encoded tokens: see wire.subject.)
        head = (
            f"NATS/1.0\r\n{wire.MSG_ID}: {msg_id}\r\n"
            f"{wire.EXPECTED_LAST_SEQUENCE}: {expected}\r\n\r\n"
            if last_id is None
            else f"NATS/1.0\r\n{wire.MSG_ID}: {msg_id}\r\n"
            f"{wire.EXPECTED_LAST_SEQUENCE}: {expected}\r\n"
            f"{wire.EXPECTED_LAST_MSG_ID}: {last_id}\r\n\r\n"
        )
        if tail_subject is not None:  # (the same headers as the publish's way, in order)
            head = (
                f"{head[:-2]}{EXPECTED_LAST_SUBJECT_SEQUENCE}: {expected}\r\n"
                f"{EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT}: {tail_subject}\r\n\r\n"
            )
        reply = f"{self._reply}{sequence}" if ask else ""
        size = len(head)
        run = self._run
        run.append(f"HPUB {message.subject}{reply} {size} {size + len(body)}\r\n{head}".encode())
        run.append(body)
        run.append(b"\r\n")
        self._run_bytes += len(body)

    async def _write(self) -> bool:
        """Hand the run of frames to nats-py, as its publish hands each one (its checks
        of the connection, its buffer, its flusher), in one piece. True: it went to the
        socket at once (:func:`_write_now`), nothing of it waits for the flusher."""
        if not self._run:
            return True
        client = self.client
        data = b"".join(self._run)
        payload, self._run_bytes = self._run_bytes, 0
        count = len(self._run) // 3
        self._run.clear()
        if client.is_closed:
            raise nats.errors.ConnectionClosedError
        if client.is_draining_pubs:
            raise nats.errors.ConnectionDrainingError
        if not client.is_connected and (
            client._max_pending_size <= 0
            or len(data) + client._pending_data_size > client._max_pending_size
        ):
            raise nats.errors.OutboundBufferLimitError
        client.stats["out_msgs"] += count
        client.stats["out_bytes"] += payload
        if _write_now(client, data):
            return True
        await client._send_command(data)
        if client._flush_queue is not None and client._flush_queue.empty():
            await client._flush_pending()
        return False

    def message_id(self, position: int) -> str:
        return wire.message_id(self.context, position, self.epoch)

    async def _wait(self) -> None:
        """Wait for an acknowledgement, at most until the oldest one is overdue."""
        self._raise_if_failed()
        oldest = next(iter(self.pending.values()))[1]
        remaining = oldest + self.ack_timeout - time.monotonic()
        if remaining <= 0:
            raise RelayError(
                f"no acknowledgement from stream {self.stream} within {self.ack_timeout:g}s",
                transient=True,
            )
        self._waiter = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(remaining):
                await self._waiter
        self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self.on_ack is not None:
            self.on_ack()

    def deny(self, reason: str) -> None:
        """The server refused a publish or a subscription of this connection: waiting
        mends nothing, so the relay stops and says why."""
        if "publish" in reason.lower() or self.inbox in reason:
            self.error = self.error or RelayError(
                f"NATS refused the relay of {self.context}: {reason}. The credentials it "
                f"connects with must allow publishing to '{self.stream}.>' and the JetStream "
                "API of that stream, and nothing else (see the README's security section)"
            )
            self._wake()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    def _on_ack(
        self,
        subject: str,
        _reply: str,
        data: bytes,
        headers: dict[str, str] | None,
        _block: bytes | None,
    ) -> None:
        try:
            self._settle(subject, data, headers)
        except Exception as exc:  # a bug here must stop the relay, not vanish in nats-py
            self.error = self.error or RelayError(f"unreadable acknowledgement: {exc!r}")
        self._wake()

    def _settle(self, subject: str, data: bytes, headers: dict[str, str] | None) -> None:
        sequence = int(subject.rpartition(".")[2])
        entry = self.pending.get(sequence)
        if entry is None:
            return
        if headers and headers.get("Status") == "503":
            self.error = self.error or RelayError(
                f"stream {self.stream} does not exist or has no responders", transient=True
            )
            return
        # A success ({"stream":..,"seq":..}) needs no parsing; "error" in it may be a name.
        ack = orjson.loads(data) if b'"error"' in data or b'"duplicate"' in data else {}
        error = ack.get("error")
        if not error and ack.get("duplicate") and ack.get("seq") != sequence:
            # JetStream remembers this id, and not at the sequence this relay chained it
            # to (there, an earlier attempt of this relay stored it: all is well). Either
            # the stream lost the message after it was stored (start over, with new ids)
            # or another relay stored it (start over): the relay looks to tell which.
            position = entry[0]
            self.error = self.error or RelayError(
                f"stream {self.stream} already saw log position {position} at sequence "
                f"{ack.get('seq')}, not where this relay put it",
                transient=True,
                lost=True,
                duplicate=(int(ack.get("seq") or 0), self.message_id(position)),
            )
            return
        if error:
            self.error = self.error or RelayError(
                f"stream {self.stream} refused log position {entry[0]}: "
                f"{error.get('description', error)} (code {error.get('err_code')})",
                transient=True,
            )
            return
        # Stored right after the message before it, so everything up to it is stored.
        while self.pending:
            first, (position, _) = self.pending.popitem(last=False)
            if first == sequence:
                break
        self.confirmed_position = position
        self.confirmed_sequence = sequence
