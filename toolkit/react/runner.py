"""Applying stream messages to a policy, each exactly once.

Each message a policy reacts to is one transaction of its context's log: the events its
commands cause and a tracking record (``Tracking(<policy>:<stream>, <sequence>)``),
written by eventsourcing's process recorder (SQLite, PostgreSQL, the JetStream log).
So a message at or below the tracking record was processed, and is passed over when
delivered again; a message whose reaction or recording failed left nothing, and is
processed again next time. Messages that cause nothing (event types the policy does not
read) are passed over without a transaction of their own: the next recorded message's
tracking covers them, or one tracking record at the end of the batch.

This is the core of ``toolkit react`` without NATS: a reader hands batches of
:class:`~toolkit.read.reader.StreamMessage` to :meth:`PolicyRunner.apply`, starting after
:meth:`PolicyRunner.position`.

Given the policy's dead letters (:class:`Holds`), it keeps each aggregate's order: a
message of an aggregate parked behind an earlier dead letter is parked behind it too,
not reacted to. :meth:`PolicyRunner.retry` reacts once more to a dead letter (whose
message the tracking record passed when it was parked): its effects are recorded with
a tracking record of their own, ``<policy>:<stream>:retry:<sequence>``
(:meth:`~toolkit.react.policy.Policy.retry_tracking_name`), in one transaction. The
policy's tracking record cannot take them, it is past that sequence already; a tracking
name per retried message can, once: a second retry of it (after a crash before its dead
letter was removed) is refused by the log and only removes the dead letter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, NamedTuple

from eventsourcing.persistence import ProcessRecorder, Tracking
from typing_extensions import TypeVar

from toolkit import wire
from toolkit.errors import ConfigurationError, ConflictError, InvalidCommand, PoisonMessage
from toolkit.react.holds import Holds, Memory
from toolkit.react.policy import Policy
from toolkit.react.tracking import Track, Tracks
from toolkit.read.reader import StreamMessage
from toolkit.read.translator import UnknownEvent
from toolkit.wire.subjects import aggregate_token
from toolkit.write.causation import Causation, Continued, continued
from toolkit.write.context import BoundedContext

C = TypeVar("C", bound=BoundedContext[Any])
log = logging.getLogger(__name__)


@dataclass
class Counts:
    """What became of the messages of one or more batches."""

    reacted: int = 0
    """Messages reacted to: their events (if any) and tracking stored together."""
    events: int = 0
    """Events of the context those reactions stored."""
    skipped: int = 0
    """Event types the policy does not read (tolerant reader)."""
    duplicates: int = 0
    """Messages at or below the tracking record: processed already."""
    rejected: int = 0
    """Messages whose reaction a command refused, or that the stream's relay did not
    publish: recorded as processed, nothing else stored, the reason kept."""
    held: int = 0
    """Messages parked without being reacted to: behind an earlier dead letter of their
    aggregate, or parked already (before a crash): recorded as processed, kept as dead
    letters."""
    elsewhere: int = 0
    """Messages of slices this runner does not hold (a policy cut into slices): another
    worker's to react to."""

    def count(self, other: Counts) -> None:
        """Count ``other``'s messages too."""
        self.reacted += other.reacted
        self.events += other.events
        self.skipped += other.skipped
        self.duplicates += other.duplicates
        self.rejected += other.rejected
        self.held += other.held
        self.elsewhere += other.elsewhere


@dataclass(frozen=True)
class Rejection:
    """A message recorded as processed without effects, and why."""

    stream: str
    sequence: int
    subject: str
    type: str | None
    """The event type of its envelope (None when it has no readable envelope)."""
    reason: str
    message: StreamMessage | None = field(default=None, compare=False, repr=False)
    """The message itself, to keep as its dead letter."""


@dataclass
class _Run:
    """Consecutive messages of one stream whose reactions are stored together."""

    reactions: list[_Reaction] = field(default_factory=list)
    through: dict[str, int] = field(default_factory=dict)
    """Each tracking record's last sequence in the run (a reaction's, or a type not read
    after it): one record, or, cut into slices, one per slice the run touches."""

    @property
    def stream(self) -> str:
        return self.reactions[0].message.stream


class _Reaction(NamedTuple):
    """A message that calls for a reaction, and what its translator made of it."""

    message: StreamMessage
    head: wire.EnvelopeHead
    facts: list[object]
    memory: str


class Retried(NamedTuple):
    """What became of a dead letter reacted to again (:meth:`PolicyRunner.retry`)."""

    outcome: Literal["reacted", "before", "rejected"]
    """``reacted``: its effects are stored now; ``before``: an earlier retry stored them;
    ``rejected``: a command refused it now, recorded as processed with its reason."""
    events: int = 0
    reason: str = ""


class PolicyRunner(Generic[C]):
    """Applies messages of the policy's streams to it, on ``context``, exactly once.

    ``on_rejected`` is called with each :class:`Rejection` after it is recorded; the
    runner also keeps them, in :attr:`rejected`. Any other failure of a reaction raises
    :class:`~toolkit.errors.PoisonMessage` naming the message, after the messages before
    it were recorded: retrying the batch goes on from there. Given ``holds`` (the
    policy's dead letters), messages of a parked aggregate are parked behind it.
    """

    def __init__(
        self,
        policy: Policy[C],
        context: C,
        *,
        on_rejected: Callable[[Rejection], None] | None = None,
        holds: Holds | None = None,
        together: int = 100,
        memory: Memory | None = None,
    ) -> None:
        if together < 1:
            raise ConfigurationError(f"together must be 1 or more, not {together}")
        if not isinstance(context.recorder, ProcessRecorder):
            raise ConfigurationError(
                f"policy {policy.name} runs on context {context.name}, which keeps no "
                f"tracking records: set reacts = True on {type(context).__name__}"
            )
        self.policy = policy
        self.context = context
        self.recorder: ProcessRecorder = context.recorder
        self.on_rejected = on_rejected
        self.holds = holds
        self.rejected: list[Rejection] = []
        self.tracks = Tracks(policy, context)  # where each message's processing is recorded
        self.together = together
        """At most this many messages' reactions are stored in one transaction."""
        self._reacted_to: dict[str, int] = {}  # stream (or slice) -> see remember_with
        self._remembered: dict[str, int] = {}
        self.memory: Memory | None = None
        if memory is not None:
            self.remember_with(memory)

    def remember_with(self, memory: Memory) -> None:
        """Keep the last foreign log position reacted to in each stream in ``memory`` too
        (after each :meth:`apply`), and start from what it kept.

        A relay whose stream lost messages publishes them again, in log order, with their
        log positions; when they come under other sequences than before (another
        publisher's message took one meanwhile), the tracking record, a sequence, does not
        know them. Their log positions do: a message at or below the last position reacted
        to is passed over as a duplicate, as projections pass it. ``memory`` is a hint
        beside the log, not in its transaction: after a crash it may lag behind by the
        last batch, whose messages the tracking record still covers by sequence."""
        self.memory = memory
        for stream, position in memory.reacted_to().items():
            self._reacted_to[stream] = max(position, self._reacted_to.get(stream, 0))
        self._remembered = dict(self._reacted_to)

    def _again(self, memory: str, head: wire.EnvelopeHead) -> bool:
        """Whether ``head``'s event was reacted to before (published again by its relay).
        ``memory``: the stream's key, or its slice's (log positions grow within each)."""
        position, known = head.logposition, self._reacted_to.get(memory)
        if known is None:  # a slice's: before the cut, what the whole policy reacted to
            known = self._reacted_to.get(memory.partition("#")[0], 0)
        return position is not None and position <= known

    def _reacted(self, memory: str, head: wire.EnvelopeHead) -> None:
        position = head.logposition
        if position is not None and position > self._reacted_to.get(memory, 0):
            self._reacted_to[memory] = position

    def position(self, stream: str) -> int:
        """The last sequence of ``stream`` recorded as processed (0 before the first):
        a reader starts after it. Cut into slices: the lowest of the slices held."""
        return self.tracks.position(stream)

    def apply(self, messages: Sequence[StreamMessage], counts: Counts | None = None) -> Counts:
        """React to each message not processed yet, in order, exactly once. Given
        ``counts``, count into it (what was done before a PoisonMessage too).

        Runs of messages of one stream that only call for reactions (up to
        :attr:`together` of them, with the types the policy does not read between them)
        are stored in one transaction with the tracking record of the last: a commit a
        message would cost most of a reaction. Should anything in a run fail, nothing of
        it is stored and its messages are taken one at a time, each in a transaction of
        its own, where a refusal, a conflict or a poison message is told from the rest."""
        counts = Counts() if counts is None else counts
        passed: dict[str, int] = {}  # tracking name -> last sequence passed over, not recorded
        streams: dict[str, str] = {}  # tracking name -> its stream
        run = _Run()
        try:
            for message in messages:
                stream, sequence = message.stream, message.sequence
                if run.reactions and (len(run.reactions) >= self.together or run.stream != stream):
                    run = self._react_together(run, counts, passed)
                track = self.tracks.track(message)
                if track.slice is not None and track.slice not in self.tracks.held:
                    counts.elsewhere += 1
                    continue
                streams[track.name] = stream
                floor = max(self.tracks.tracked(track.name, stream), passed.get(track.name, 0))
                if run.reactions:  # (not recorded yet)
                    floor = max(floor, run.through.get(track.name, 0))
                if sequence <= floor:  # processed already, or delivered twice in the batch
                    counts.duplicates += 1
                    continue
                reaction = self._reaction(message, track)
                if isinstance(reaction, _Reaction):
                    run.reactions.append(reaction)
                    run.through[track.name] = sequence
                elif reaction in ("skip", "again"):
                    if reaction == "skip":
                        counts.skipped += 1
                    else:
                        counts.duplicates += 1  # published again after its stream lost it
                    if run.reactions:
                        run.through[track.name] = sequence  # the run's tracking covers it
                    else:
                        passed[track.name] = sequence
                else:  # handled on its own, after the run before it, in order
                    run = self._react_together(run, counts, passed)
                    self._apply(message, counts, passed)
            self._react_together(run, counts, passed)
            self.tracks.settle(messages, passed, streams)
        finally:
            self.tracks.record_passed(passed, streams)
            if self.memory is not None and self._reacted_to != self._remembered:
                self.memory.remember(dict(self._reacted_to))
                self._remembered = dict(self._reacted_to)
        return counts

    def _reaction(
        self, message: StreamMessage, track: Track
    ) -> _Reaction | Literal["skip", "again", "alone"]:
        """``message`` (not processed yet) as a plain reaction to store with others;
        ``skip`` for a type the policy does not read; ``again`` for one reacted to before
        (its log position says so: see :meth:`remember_with`); ``alone`` for one that needs
        handling of its own (not relayed, parked, failing to translate: :meth:`_apply`)."""
        stream, sequence = message.stream, message.sequence
        head = wire.relayed_head(stream, message.headers.get(wire.MSG_ID), message.data)
        if isinstance(head, str):
            return "alone"
        if self._again(track.memory, head):
            return "again"
        if self.holds is not None and (
            self.holds.kept(stream, sequence)
            or self.holds.holding(stream, aggregate_token(message.subject)) is not None
        ):
            return "alone"
        try:
            facts = self.policy.translator(stream).translate(message, head)
        except UnknownEvent:
            return "skip"
        except Exception:
            return "alone"
        return _Reaction(message, head, facts, track.memory)

    def _react_together(self, run: _Run, counts: Counts, passed: dict[str, int]) -> _Run:
        """Store the reactions of ``run`` in one transaction, or, should anything fail,
        take its messages one at a time; an empty run to go on with."""
        if not run.reactions:
            return run
        stream = run.stream
        if len(run.reactions) > 1:
            tracking = self.tracks.tracking(stream, run.through)
            causes: dict[int, Causation] = {}
            try:
                with self.context.processing(tracking, caused_by=causes) as processing:
                    events = processing.events
                    for reaction in run.reactions:
                        before = len(events)
                        with self._continuing(reaction.head, reaction.message) as cause:
                            for fact in reaction.facts:
                                self.policy.react(fact, self.context)
                        for event in events[before:]:
                            causes[id(event)] = cause
            except Exception:  # nothing of the run is stored: see what failed, one by one
                pass
            else:
                self.tracks.moved(run.through)
                for reaction in run.reactions:
                    self._reacted(reaction.memory, reaction.head)
                counts.reacted += len(run.reactions)
                counts.events += len(processing.events)
                return _Run()
            for name in run.through:  # refused by the fence, perhaps: read them again
                if self.tracks.slices is not None:
                    self.tracks.forget(name)
        for reaction in run.reactions:
            self._apply(reaction.message, counts, passed)
        for name, through in run.through.items():
            if through > passed.get(name, 0):
                passed[name] = through  # the types not read after the last reaction
        return _Run()

    def _apply(self, message: StreamMessage, counts: Counts, passed: dict[str, int]) -> None:
        stream, sequence = message.stream, message.sequence
        translator = self.policy.translator(stream)
        track = self.tracks.track(message)
        if track.slice is not None and track.slice not in self.tracks.held:
            counts.elsewhere += 1
            return
        if sequence <= max(self.tracks.tracked(track.name, stream), passed.get(track.name, 0)):
            counts.duplicates += 1
            return
        head = wire.relayed_head(stream, message.headers.get(wire.MSG_ID), message.data)
        if isinstance(head, str):
            reason = f"not published by the {stream} relay: {head}"
            self._reject(message, None, reason, counts)
            return
        if self._again(track.memory, head):
            counts.duplicates += 1  # published again after its stream lost it
            passed[track.name] = sequence
            return
        if self.holds is not None and self._held(message, head.type, self.holds):
            counts.held += 1
            return
        try:
            facts = translator.translate(message, head)
        except UnknownEvent:
            counts.skipped += 1
            passed[track.name] = sequence
            return
        except Exception as exc:  # a contract broken, a version not read yet, a bug
            raise self._poison(message, exc) from exc
        moves = {track.name: sequence}
        tracking = self.tracks.tracking(stream, moves)
        try:
            within = self._continuing(head, message)
            with within as cause, self.context.processing(tracking, caused_by=cause) as processing:
                for fact in facts:
                    self.policy.react(fact, self.context)
        except InvalidCommand as exc:
            self._reject(message, head.type, str(exc), counts)
            return
        except ConflictError as exc:
            if self._processed_elsewhere(track.name, stream, sequence):
                counts.duplicates += 1
                return
            raise self._poison(message, exc) from exc
        except Exception as exc:
            raise self._poison(message, exc) from exc
        self.tracks.moved(moves)
        self._reacted(track.memory, head)
        counts.reacted += 1
        counts.events += len(processing.events)

    def _continuing(self, head: wire.EnvelopeHead, message: StreamMessage) -> Continued:
        """The cause of the effects of ``message``, in the span of its reaction."""
        return continued(head, f"{message.stream}:{message.sequence}", f"{self.policy.name} react")

    def _held(self, message: StreamMessage, type_: str, holds: Holds) -> bool:
        """Park ``message`` behind its aggregate's dead letter, if it has one (or pass
        it over: it is a dead letter already), and record it as processed."""
        stream, sequence = message.stream, message.sequence
        if not holds.kept(stream, sequence):
            root = holds.holding(stream, aggregate_token(message.subject))
            if root is None or root >= sequence:  # never the ones before it
                return False
            holds.hold(message, type_, root)  # before its tracking, as a park
        try:
            self.pass_over(message)
        except ConflictError as exc:
            raise self._poison(message, exc) from exc
        return True

    def retry(self, message: StreamMessage) -> Retried:
        """React to ``message``, a dead letter (the policy's tracking record passed it),
        once more with the code as it is now: its effects and the tracking record
        ``Policy.retry_tracking_name(stream, sequence)`` in one transaction, so that it
        causes them once however often it is retried. A command refusing it records that
        tracking alone (a rejection now); any other failure stores nothing and raises
        :class:`~toolkit.errors.PoisonMessage`."""
        stream, sequence = message.stream, message.sequence
        name = self.policy.retry_tracking_name(stream, sequence)
        if self.recorder.max_tracking_id(name) is not None:
            return Retried("before")
        tracking = Tracking(name, sequence)
        head = wire.relayed_head(stream, message.headers.get(wire.MSG_ID), message.data)
        if isinstance(head, str):
            return self._retry_refused(tracking, f"not published by the {stream} relay: {head}")
        try:
            facts = self.policy.translator(stream).translate(message, head)
        except UnknownEvent:
            facts = []  # a type not read (parked behind another): nothing to do
        except Exception as exc:
            raise self._poison(message, exc) from exc
        try:
            within = self._continuing(head, message)
            with within as cause, self.context.processing(tracking, caused_by=cause) as processing:
                for fact in facts:
                    self.policy.react(fact, self.context)
        except InvalidCommand as exc:
            return self._retry_refused(tracking, str(exc))
        except ConflictError as exc:
            if self.recorder.max_tracking_id(name) is not None:
                return Retried("before")
            raise self._poison(message, exc) from exc
        except Exception as exc:
            raise self._poison(message, exc) from exc
        return Retried("reacted", len(processing.events))

    def _retry_refused(self, tracking: Tracking, reason: str) -> Retried:
        """Record a retry a command refused (its tracking alone)."""
        try:
            with self.context.processing(tracking):
                pass
        except ConflictError:
            if self.recorder.max_tracking_id(tracking.application_name) is not None:
                return Retried("before")
            raise
        return Retried("rejected", reason=reason)

    def _reject(
        self, message: StreamMessage, type_: str | None, reason: str, counts: Counts
    ) -> None:
        """Record ``message`` as processed with no effect, and keep why."""
        stream, sequence = message.stream, message.sequence
        try:
            recorded = self.pass_over(message)
        except ConflictError as exc:
            raise self._poison(message, exc) from exc
        if not recorded:  # another runner recorded it first
            counts.duplicates += 1
            return
        counts.rejected += 1
        rejection = Rejection(stream, sequence, message.subject, type_, reason, message)
        log.warning("policy %s rejected %s/%d: %s", self.policy.name, stream, sequence, reason)
        self.rejected.append(rejection)
        if self.on_rejected is not None:
            self.on_rejected(rejection)

    def pass_over(self, message: StreamMessage) -> bool:
        """Record ``message`` as processed with no effect (a parked message: its reaction
        kept failing), so the policy moves on; whether this recorded it (False: it was
        processed already)."""
        stream, sequence = message.stream, message.sequence
        track = self.tracks.track(message)
        if sequence <= self.tracks.tracked(track.name, stream):
            return False
        moves = {track.name: sequence}
        try:
            with self.context.processing(self.tracks.tracking(stream, moves)):
                pass
        except ConflictError:
            if self._processed_elsewhere(track.name, stream, sequence):
                return False
            raise
        self.tracks.moved(moves)
        head = wire.relayed_head(stream, message.headers.get(wire.MSG_ID), message.data)
        if not isinstance(head, str):  # parked or refused: its copies are not reacted to
            self._reacted(track.memory, head)
        return True

    def _processed_elsewhere(self, name: str, stream: str, sequence: int) -> bool:
        """Whether another runner recorded ``sequence`` first (its tracking won)."""
        self.tracks.forget(name)
        return self.tracks.tracked(name, stream) >= sequence

    def _poison(self, message: StreamMessage, exc: Exception) -> PoisonMessage:
        return PoisonMessage(
            f"policy {self.policy.name} failed on {message.stream} at sequence "
            f"{message.sequence}: {type(exc).__name__}: {exc}",
            stream=message.stream,
            sequence=message.sequence,
            cause=exc,
        )
