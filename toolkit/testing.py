"""A testing kit: a context's published events, a projection's read model and a
translator's upcasters, checked without a NATS server.

Nothing here imitates the pipeline: each helper runs the code production runs, with
the stream taken out. :func:`published_events` reads a context's log through the
relay's own outbox (so its envelopes, subjects and ids are the relay's, private events
left out); :class:`ProjectionHarness` hands messages to the projector's own
:func:`~toolkit.read.batches.apply_batch`, so the translator, the store's transaction,
the checkpoint, duplicate detection and the dead letters are the real ones, on a SQLite
read model in a temporary folder. What the stream adds, sequence numbers, is done as
JetStream does it: one after the other, per stream.

Example::

    sales = in_memory(Sales)
    with published_by(sales) as published:
        sales.register_customer("Ada", "ada@example.com")
    with ProjectionHarness(Accounts()) as billing:
        billing.feed(published)
        assert billing.query("SELECT holder FROM account") == [("Ada",)]
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec

from toolkit import wire
from toolkit.errors import PoisonMessage
from toolkit.read.batches import Counts, apply_batch
from toolkit.read.projection import Projection
from toolkit.read.reader import StreamMessage
from toolkit.read.store import ReadModelStore
from toolkit.read.translator import Translator
from toolkit.readmodels import Connection, tables
from toolkit.readmodels.sqlite import SQLiteHome
from toolkit.wire.contracts import IntegrationEvent, contract_of
from toolkit.write.context import BoundedContext
from toolkit.write.outbox import Outbox
from toolkit.write.published import OutgoingMessage

__all__ = [
    "ProjectionHarness",
    "PublishedEvent",
    "in_memory",
    "published_by",
    "published_events",
    "relayed_event",
    "translate",
    "upcast",
]

C = TypeVar("C", bound=BoundedContext[Any])

_decode_envelope = msgspec.json.Decoder(wire.Envelope).decode


@dataclass(frozen=True)
class PublishedEvent:
    """One integration event as a relay puts it on its stream: subject, headers and
    body, with the body's envelope decoded (``data`` as plain JSON values) to assert on."""

    subject: str
    headers: dict[str, str]
    body: bytes
    envelope: wire.Envelope

    @classmethod
    def of(cls, subject: str, body: bytes, headers: dict[str, str]) -> PublishedEvent:
        return cls(subject, dict(headers), body, _decode_envelope(body))

    @property
    def stream(self) -> str:
        """The publishing context, which names its stream."""
        return self.subject.partition(".")[0]

    @property
    def type(self) -> str:
        return self.envelope.type

    @property
    def version(self) -> int:
        return self.envelope.schemaversion

    @property
    def data(self) -> Any:
        return self.envelope.data

    @property
    def position(self) -> int:
        """The event's position in its context's log."""
        return self.envelope.logposition

    @property
    def aggregate_id(self) -> str:
        return self.envelope.subject

    def message(self, sequence: int) -> StreamMessage:
        """The event as a reader hands it over at stream ``sequence``."""
        return StreamMessage(self.stream, sequence, self.subject, dict(self.headers), self.body)


# -- the write side ------------------------------------------------------------------


def in_memory(context_type: type[C], **env: str) -> C:
    """A context whose log is SQLite in memory: the relay's fast path reads it, as it
    reads a SQLite file (``env`` adds or overrides eventsourcing's variables)."""
    return context_type(
        env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": ":memory:", **env}
    )


def published_events(
    context: BoundedContext[Any], *, after: int = 0, page: int = 1000
) -> list[PublishedEvent]:
    """What the context's relay would publish of its log after position ``after``: read
    and translated by the relay's :class:`~toolkit.write.outbox.Outbox`, a page at a time."""
    outbox = Outbox(context)
    head = context.recorder.max_notification_id() or 0
    published: list[PublishedEvent] = []
    position = after
    while position < head:
        read = outbox.read(position, head, page)
        published += [_published(message) for message in read.messages]
        position = read.position
    return published


@contextlib.contextmanager
def published_by(context: BoundedContext[Any]) -> Iterator[list[PublishedEvent]]:
    """Collect, into the list it gives, what the commands run inside the block publish
    (read from the log when the block ends, as the relay reads it)."""
    before = context.recorder.max_notification_id() or 0
    published: list[PublishedEvent] = []
    yield published
    published += published_events(context, after=before)


def _published(message: OutgoingMessage) -> PublishedEvent:
    return PublishedEvent.of(message.subject, message.body, message.headers)


def relayed_event(
    event: IntegrationEvent | str,
    data: Any = None,
    *,
    position: int,
    version: int | None = None,
    source: str | None = None,
    aggregate_id: str = "x",
    aggregate_type: str = "aggregate",
    aggregate_version: int = 1,
    time: datetime | None = None,
) -> PublishedEvent:
    """An event as another context's relay publishes it, at log ``position``: a
    contract instance (its name and version from its class), or a contract name with
    its ``data`` (a dict, or bytes put in the envelope as they are) and ``version``
    (default 1): the way to build an old version's payload, or a broken one."""
    if isinstance(event, IntegrationEvent):
        type_, contract_version = contract_of(type(event))
        data, version = event, contract_version if version is None else version
    else:
        type_, version = event, 1 if version is None else version
    source = source or type_.partition(".")[0]
    msg_id = wire.message_id(source, position)
    envelope = wire.Envelope(
        specversion=wire.SPECVERSION,
        id=msg_id,
        source=source,
        type=type_,
        schemaversion=version,
        subject=aggregate_id,
        time=time or datetime.now(UTC),
        aggregatetype=aggregate_type,
        aggregateversion=aggregate_version,
        logposition=position,
        datacontenttype=wire.DATACONTENTTYPE,
        data=msgspec.Raw(data) if isinstance(data, bytes) else data,
    )
    subject = wire.subject(source, aggregate_type, aggregate_id, type_.rpartition(".")[2])
    return PublishedEvent.of(subject, wire.encode_envelope(envelope), {wire.MSG_ID: msg_id})


# -- translators ---------------------------------------------------------------------


def translate(translator: Translator, event: PublishedEvent | IntegrationEvent) -> list[object]:
    """The facts ``translator`` makes of one event, upcasters included, as the
    projector has it translate a message."""
    if isinstance(event, IntegrationEvent):
        event = relayed_event(event, position=1)
    return translator.translate(event.message(1))


def upcast(translator: Translator, event: PublishedEvent | IntegrationEvent) -> IntegrationEvent:
    """What ``translator``'s handler is given for ``event``, an older version of a
    contract (as published, or a contract instance): it decoded as that version, then
    upcast step by step (see :meth:`~toolkit.read.translator.Translator.upcasted`)."""
    if isinstance(event, PublishedEvent):
        translator.check_readable(event.type, event.version)
        head = wire.decode_head(event.body)
        event = translator.contracts.decode(head.type, head.schemaversion, head.data)
    return translator.upcasted(event)


# -- projections ---------------------------------------------------------------------


class ProjectionHarness:
    """A projection's read model in a temporary folder (or ``directory``), fed as its
    projector feeds it: by :func:`~toolkit.read.batches.apply_batch`, ``batch_size``
    messages of a stream at a time, after joining each stream where its ``starts_at``
    says. A message that fails the projection raises
    :class:`~toolkit.errors.PoisonMessage` (``poison="raise"``) or, with
    ``poison="park"``, goes to the dead letters as the projector puts it there once its
    retries are spent (without waiting for them)."""

    def __init__(
        self,
        projection: Projection,
        *,
        directory: Path | str | None = None,
        batch_size: int = 1000,
        poison: Literal["raise", "park"] = "raise",
    ) -> None:
        self._folder = None
        if directory is None:
            self._folder = tempfile.TemporaryDirectory(prefix=f"toolkit-{projection.name}-")
            directory = self._folder.name
        self.projection = projection
        self.batch_size = batch_size
        self.poison = poison
        self.home = SQLiteHome(directory, projection.name)
        """The read model's home: hand it to a read endpoint's router to test it too."""
        self.store = ReadModelStore(self.home.live(), projection)
        self.heads: dict[str, int] = {}
        """The last sequence of each stream fed."""
        self.counts = Counts()
        """What became of every message fed so far."""

    def __enter__(self) -> ProjectionHarness:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.store.close()
        self.home.close()
        if self._folder is not None:
            self._folder.cleanup()

    def feed(self, events: Iterable[PublishedEvent | StreamMessage]) -> Counts:
        """Append events to their streams (each the next sequence) and project them; a
        :class:`~toolkit.read.reader.StreamMessage` keeps its own stream and sequence.
        Events of streams the projection does not read are not read, as by the
        projector. Returns what became of these messages."""
        streams = {translator.stream for translator in self.projection.translators}
        runs: list[tuple[str, list[StreamMessage]]] = []
        for event in events:
            message = event if isinstance(event, StreamMessage) else self._append(event)
            self.heads[message.stream] = max(self.heads.get(message.stream, 0), message.sequence)
            if message.stream not in streams:
                continue
            if runs and runs[-1][0] == message.stream:
                runs[-1][1].append(message)
            else:
                runs.append((message.stream, [message]))
        counts = Counts()
        for stream, messages in runs:
            translator = self.projection.translator_for(stream)
            self._join(stream, messages[0].sequence)
            for start in range(0, len(messages), self.batch_size):
                counts.count(self._apply(translator, messages[start : start + self.batch_size]))
        self.counts.count(counts)
        return counts

    def _append(self, event: PublishedEvent) -> StreamMessage:
        return event.message(self.heads.get(event.stream, 0) + 1)

    def _join(self, stream: str, first: int) -> None:
        """Join a stream the first time, as the projector does (``"new"``: after what
        came before these messages; a time: from the beginning)."""
        if self.store.joined(stream):
            return
        start = self.projection.starts_at
        if start == "new":
            before = first - 1
        elif isinstance(start, int):
            before = max(0, start - 1)
        else:
            before = 0
        self.store.join(stream, before)

    def _apply(self, translator: Translator, batch: list[StreamMessage]) -> Counts:
        while True:
            try:
                return apply_batch(self.store, translator, batch)
            except PoisonMessage as poison:
                if self.poison == "raise":
                    raise
                message = next(m for m in batch if m.sequence == poison.sequence)
                cause, tries = poison.cause, self.projection.retries + 1
                self.store.park(
                    message,
                    f"{type(cause).__name__}: {cause} (failed {tries} times)",
                    aggregate=self.projection.on_poison == "park-aggregate",
                )  # applied again: the parked message is counted a dead letter

    # -- what a test asserts on ---------------------------------------------------------

    @property
    def db(self) -> Connection:
        """The read model's connection (the projection's tables, committed)."""
        return self.store.db

    def query(self, sql: str, parameters: Any = ()) -> list[tuple[Any, ...]]:
        """The rows of a query on the read model, as tuples."""
        return [tuple(row) for row in self.db.execute(sql, parameters).fetchall()]

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of the projection's own tables, sorted, by table."""
        return tables.dump(self.db)

    def checkpoint(self, stream: str | None = None) -> int:
        """The last sequence of ``stream`` applied (the projection's only stream by
        default)."""
        return self.store.checkpoint(self._stream(stream))

    def position(self, stream: str | None = None) -> int | None:
        """The log position of ``stream``'s context the read model has passed."""
        return self.store.position(self._stream(stream))

    @property
    def dead_letters(self) -> list[tables.DeadLetter]:
        return self.store.dead_letters()

    def _stream(self, stream: str | None) -> str:
        if stream is not None:
            return stream
        streams = [translator.stream for translator in self.projection.translators]
        if len(streams) != 1:
            raise ValueError(f"projection {self.projection.name} reads {streams}: name one")
        return streams[0]
