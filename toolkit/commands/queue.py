"""A context's command queue on JetStream: the work-queue stream commands wait in, the
status bucket, and the two things a client of the queue does, submit a command and read
its status.

Layout, per context (names from the context's, like its log's ``<name>_log``):

- the stream ``<context>_commands`` (retention WorkQueue: a command leaves it when a
  worker acknowledges it), subjects ``<context>_commands.<command>``, one message per
  command: its JSON body, its id in ``Nats-Msg-Id`` (the server drops a second publish
  of one id within the stream's duplicate window);
- its one durable pull consumer ``workers``, shared by every worker in any process
  (competing consumers), explicit acks, the declaration's ``ack_wait`` and
  ``max_deliver``;
- the key-value bucket ``<context>_commands`` (its stream: ``KV_<context>_commands``), one
  key per command id holding its :class:`~toolkit.commands.status.CommandStatus`, kept
  ``status_ttl`` seconds; any API process and any worker reads and writes it.

Command ids are UUIDs made here, never a client's text: a random one, or, for a request
with an ``Idempotency-Key``, one derived from the context and the key (uuid5). So no
client text becomes a subject token or a key, and a retried request finds the first
one's status under the same id. The status is created before the command is published,
with an atomic create: of two requests with one key, one creates it and publishes; the
other reads it. A status found pending is published again (the id dedups it on the
stream; past the duplicate window the command's outcome in the log does): a process that
died between the two steps left a status whose command was never queued.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import uuid
from typing import Any

import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StreamConfig,
)
from nats.js.kv import KeyValue

from toolkit.commands.declaration import CommandQueue
from toolkit.commands.status import CommandStatus, decode, encode, now
from toolkit.errors import InvalidCommand
from toolkit.nats.connection import Connection
from toolkit.tracing import TRACEPARENT, TRACESTATE
from toolkit.write.causation import ambient

CONSUMER = "workers"
"""The durable consumer every worker of a context's queue shares."""
KEY_NAMESPACE = uuid.UUID("1b8f3c52-47c9-5e0a-b6d4-2f9e8a7c6b5d")
"""The namespace of ids derived from an ``Idempotency-Key`` (uuid5)."""
MAX_KEY = 255
_KEY = re.compile(r"[\x21\x23-\x7e]{1,255}")
"""Printable ASCII without space or ``"``: what an ``Idempotency-Key`` may hold."""


class KeyReused(InvalidCommand):
    """An ``Idempotency-Key`` sent again with another command or body."""


def stream_name(context: str) -> str:
    return f"{context}_commands"


def bucket_name(context: str) -> str:
    return f"{context}_commands"


def subject(context: str, command: str) -> str:
    """The subject of ``command``: both names are checked names (no dot, no wildcard)."""
    return f"{stream_name(context)}.{command}"


def idempotency_key(header: str) -> str:
    """The key of an ``Idempotency-Key`` header (a structured-field string, its quotes
    optional); :class:`~toolkit.errors.InvalidCommand` for an empty, long or odd one."""
    key = header.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not _KEY.fullmatch(key):
        raise InvalidCommand(
            f"Idempotency-Key must be 1 to {MAX_KEY} printable ASCII characters, no space "
            "or '\"' (a UUID is a good one)"
        )
    return key


def command_id(context: str, key: str | None) -> str:
    """A new command's id: derived from ``key`` when the request has one, else random."""
    if key is None:
        return str(uuid.uuid4())
    return str(uuid.uuid5(KEY_NAMESPACE, f"{context}\n{key}"))


def canonical_id(text: str) -> str | None:
    """``text`` as a command id (a UUID in its canonical form), None when it is none."""
    if len(text) > 36:
        return None
    try:
        parsed = uuid.UUID(text)
    except ValueError:
        return None
    return str(parsed) if str(parsed) == text.lower() else None


def fingerprint(command: str, body: bytes) -> str:
    return hashlib.sha256(command.encode() + b"\n" + body).hexdigest()


def _key(command: str) -> str:
    """A KV key for a command id (the UUID without its dashes)."""
    return command.replace("-", "")


class QueueClient:
    """A context's command queue as a client uses it: the API to submit commands and read
    their statuses, the workers to write them. Each call takes the connection's current
    client (one the server closed is replaced)."""

    def __init__(self, queue: CommandQueue[Any], client: Client | Connection) -> None:
        self.queue = queue
        self.connection = Connection.of(client)
        self.context = queue.context
        self.stream = stream_name(queue.context)
        self.bucket = bucket_name(queue.context)
        self._kv: tuple[JetStreamContext, KeyValue] | None = None

    @property
    def js(self) -> JetStreamContext:
        return self.connection.js

    async def ensure(self, *, consumer: bool = False) -> None:
        """Create the stream and the bucket (and with ``consumer`` the workers' consumer)
        when missing; leave them as they are otherwise."""
        js = self.js
        config = StreamConfig(
            name=self.stream,
            description=f"commands queued for context {self.context} (toolkit.commands)",
            subjects=[f"{self.stream}.*"],
            retention=RetentionPolicy.WORK_QUEUE,
        )
        try:
            await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await js.add_stream(config)
        await self._bucket()
        if consumer:
            await js.add_consumer(
                self.stream,
                ConsumerConfig(
                    durable_name=CONSUMER,
                    deliver_policy=DeliverPolicy.ALL,
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=self.queue.ack_wait,
                    max_deliver=self.queue.max_deliver,
                    max_ack_pending=1000,
                ),
            )

    async def _bucket(self) -> KeyValue:
        js = self.js
        if self._kv is not None and self._kv[0] is js:
            return self._kv[1]
        try:
            kv = await js.key_value(self.bucket)
        except nats.js.errors.BucketNotFoundError:
            kv = await js.create_key_value(
                KeyValueConfig(
                    bucket=self.bucket,
                    description=f"statuses of context {self.context}'s queued commands",
                    history=1,
                    ttl=self.queue.status_ttl,
                )
            )
        self._kv = (js, kv)
        return kv

    async def submit(
        self, command: str, body: bytes, *, key: str | None = None
    ) -> tuple[CommandStatus, bool]:
        """Queue ``command`` with ``body`` (decoded already: see
        :meth:`~toolkit.commands.declaration.CommandType.decode`); its status, and whether
        it was the status of an earlier request with the same ``key`` (nothing queued
        then, unless that one was never queued). :class:`KeyReused` when ``key`` came
        with another command or body."""
        kv = await self._bucket()
        status = CommandStatus(
            id=command_id(self.context, key),
            context=self.context,
            command=command,
            accepted_at=now(),
            fingerprint=fingerprint(command, body),
        )
        try:
            await kv.create(_key(status.id), encode(status))
        except nats.js.errors.KeyWrongLastSequenceError:
            found = await self.status(status.id)
            if found is None:  # expired just now: take the key
                return await self.submit(command, body, key=key)
            if found.fingerprint != status.fingerprint:
                raise KeyReused(
                    "this Idempotency-Key was sent before with another command or body: "
                    "use a new key for a new command"
                ) from None
            if not found.final:
                await self._publish(found.id, command, body)
            return found, True
        try:
            await self._publish(status.id, command, body)
        except BaseException:
            if key is None:  # the client cannot ask again for this one: leave no status
                await self._forget(status.id)
            raise
        return status, False

    async def _publish(self, command_id: str, command: str, body: bytes) -> None:
        """Queue the command, with the trace of the request submitting it (its worker's
        saves continue it: :mod:`toolkit.tracing`)."""
        headers = {"Nats-Msg-Id": command_id}
        cause = ambient()
        if cause is not None and cause.traceparent is not None:
            headers[TRACEPARENT] = cause.traceparent
            if cause.tracestate is not None:
                headers[TRACESTATE] = cause.tracestate
        await self.js.publish(subject(self.context, command), body, headers=headers)

    async def _forget(self, command_id: str) -> None:
        with contextlib.suppress(Exception):  # best effort: it would expire anyway
            await (await self._bucket()).purge(_key(command_id))

    async def status(self, command_id: str) -> CommandStatus | None:
        """The status of ``command_id`` (None: unknown, or expired)."""
        kv = await self._bucket()
        try:
            entry = await kv.get(_key(command_id))
        except nats.js.errors.KeyNotFoundError:  # KeyDeletedError is one
            return None
        return None if entry.value is None else decode(entry.value)

    async def finish(self, status: CommandStatus) -> CommandStatus:
        """Write ``status`` (done or failed) unless the command's status is final already
        (a worker before this one finished it): the one kept."""
        kv = await self._bucket()
        key = _key(status.id)
        while True:
            try:
                entry = await kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                entry = None
            if entry is not None and entry.value is not None:
                found = decode(entry.value)
                if found.final:
                    return found
                status.accepted_at = found.accepted_at
                status.fingerprint = found.fingerprint
            try:
                if entry is None:
                    await kv.create(key, encode(status))
                else:
                    await kv.update(key, encode(status), last=entry.revision)
                return status
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # written meanwhile: look again
