"""A policy's tracking records: where the processing of each message it reads is
recorded in its context's log, in the transaction of the message's effects.

A policy that runs whole has one record a stream (``<policy>:<stream>``), whose position
only moves forward. One cut into slices (:mod:`toolkit.react.slices`) has one a slice
(``<policy>:<stream>#<k>``; the count is recorded once as ``<policy>:<stream>#slices``),
each moved only from where its worker last saw it (:class:`~toolkit.logs.fence.FencedTracking`):
the fence that keeps a worker that lost a slice without knowing it from causing an effect
twice. A slice with no record yet starts where the whole policy's record is.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from eventsourcing.persistence import IntegrityError, ProcessRecorder, Tracking

from toolkit.errors import ConfigurationError
from toolkit.logs.fence import FencedTracking, Move, fences
from toolkit.react.policy import Policy
from toolkit.read.reader import StreamMessage
from toolkit.read.slices import slice_of
from toolkit.wire.subjects import aggregate_token
from toolkit.write.context import BoundedContext


def whole_position(recorder: ProcessRecorder, policy: Policy[Any], stream: str) -> int:
    """The last sequence of ``stream`` the policy's whole tracking record says was
    processed (0: no record): where a slice with no record of its own yet is."""
    return recorder.max_tracking_id(policy.tracking_name(stream)) or 0


def recorded_positions(recorder: ProcessRecorder, policy: Policy[Any], stream: str) -> list[int]:
    """Where the policy's tracking records of ``stream`` are, read from the log, creating
    nothing: the whole policy's (one), or, cut into slices, each slice's by slice (one
    with no record yet: where the whole policy's is). A reader of every slice starts
    after the lowest."""
    if policy.slices is None:
        return [whole_position(recorder, policy, stream)]
    stored = [
        recorder.max_tracking_id(policy.slice_tracking_name(stream, k))
        for k in range(policy.slices)
    ]
    whole = whole_position(recorder, policy, stream) if None in stored else 0
    return [whole if s is None else s for s in stored]


class Track(NamedTuple):
    """Where a message's processing is recorded: the tracking record of its stream, or
    of its stream's slice when the policy is cut into slices."""

    name: str
    """The tracking record's name."""
    memory: str
    """The key of the last foreign log position reacted to (see :class:`Memory`)."""
    slice: int | None


class Tracks:
    """The tracking records of a policy running on a context, as its runner last saw or
    wrote them (read from the log the first time, and again after :meth:`forget`)."""

    def __init__(self, policy: Policy[Any], context: BoundedContext[Any]) -> None:
        assert isinstance(context.recorder, ProcessRecorder)
        self.policy = policy
        self.context = context
        self.recorder: ProcessRecorder = context.recorder
        self.slices = policy.slices
        self.held: frozenset[int] = frozenset(range(self.slices or 0))
        """The slices its runner reacts to (cut into slices: all of them until
        :meth:`hold` says otherwise); the messages of the others are another's."""
        self._positions: dict[str, int] = {}
        """Tracking record name -> the last sequence recorded (or, for a slice with no
        record yet, where the policy was when it was cut)."""
        self._stored: dict[str, int | None] = {}
        """A slice's tracking record -> its value as its runner last saw it (None: none
        yet): where a fenced write moves it from."""
        self._names: dict[str, list[str]] = {}
        self._whole: dict[str, Track] = {}
        self.settle_every = 0.0
        """Cut into slices: seconds between two moves of the held slices' records to the
        end of a batch (a slice whose messages are rare would otherwise keep an old
        record, and every worker starting would read the stream again from there). 0:
        after every batch; a worker following a stream live settles once a second."""
        self._settled = -math.inf
        self._unsettled: dict[str, int] = {}
        """Stream -> the end of the last batch applied since the held slices' records were
        last moved to what was read (:meth:`settle`)."""
        self._check_cut()

    def _check_cut(self) -> None:
        """Record, once, how many slices each stream is cut into; refuse a count other
        than the one recorded, and a whole runner of a policy that was cut: either would
        start from tracking records that do not say what was reacted to."""
        for stream in self.policy.streams:
            name = self.policy.cut_tracking_name(stream)
            cut = self.recorder.max_tracking_id(name)
            if cut is None and self.slices is not None:
                if not fences(self.recorder):
                    raise ConfigurationError(
                        f"policy {self.policy.name} is cut into slices, but the log of context "
                        f"{self.context.name} ({type(self.recorder).__name__}) does not fence "
                        "tracking records: leave PROCESS_RECORDER_TOPIC unset (toolkit's "
                        "recorders fence them)"
                    )
                with contextlib.suppress(IntegrityError):  # another worker recorded it
                    self.recorder.insert_tracking(Tracking(name, self.slices))
                cut = self.recorder.max_tracking_id(name)
            if cut is not None and cut != self.slices:
                now = "as a whole" if self.slices is None else f"into {self.slices}"
                raise ConfigurationError(
                    f"policy {self.policy.name} was cut into {cut} slices of {stream}, and "
                    f"cannot run {now}: each slice's tracking record says what was reacted "
                    f"to, and no other cut would read them; declare slices = {cut} on it"
                )

    def hold(self, slices: frozenset[int]) -> None:
        """React to the messages of these slices only (the leases a worker holds)."""
        if slices - self.held:
            self._unsettled.clear()  # (a slice gained is not at the ends of what was read)
        self.held = slices

    def track(self, message: StreamMessage) -> Track:
        stream = message.stream
        if self.slices is None:  # (a message's: built once a stream)
            whole = self._whole.get(stream)
            if whole is None:
                whole = self._whole[stream] = Track(self.policy.tracking_name(stream), stream, None)
            return whole
        k = slice_of(aggregate_token(message.subject), self.slices)
        return Track(self.slice_names(stream)[k], f"{stream}#{k}", k)

    def slice_names(self, stream: str) -> list[str]:
        """The tracking record names of ``stream``'s slices, by slice."""
        names = self._names.get(stream)
        if names is None:
            self.policy.translator(stream)  # (a stream it does not read: say so)
            names = self._names[stream] = [
                self.policy.slice_tracking_name(stream, k) for k in range(self.slices or 0)
            ]
        return names

    def tracked(self, name: str, stream: str) -> int:
        """The last sequence tracking record ``name`` (of ``stream``) says was processed."""
        position = self._positions.get(name)
        if position is None:
            stored = self.recorder.max_tracking_id(name)
            if self.slices is None:
                position = stored or 0
            else:
                self._stored[name] = stored
                if stored is None:  # a slice not reacted to yet: where the whole policy was
                    stored = whole_position(self.recorder, self.policy, stream)
                position = stored
            self._positions[name] = position
        return position

    def forget(self, name: str) -> None:
        """Read tracking record ``name`` again next time (another may have moved it)."""
        self._positions.pop(name, None)
        self._stored.pop(name, None)

    def tracking(self, stream: str, moves: dict[str, int]) -> Tracking:
        """The tracking of a transaction recording these positions. Cut into slices, each
        slice's record moves only from where its runner last saw it: a worker that lost
        the slice to another without knowing it has its transaction refused."""
        if self.slices is None:
            ((name, position),) = moves.items()
            return Tracking(name, position)
        for name in moves:
            self.tracked(name, stream)
        return FencedTracking.of([Move(n, self._stored[n], p) for n, p in moves.items()])

    def moved(self, moves: dict[str, int]) -> None:
        for name, position in moves.items():
            self._positions[name] = position
            if self.slices is not None:
                self._stored[name] = position

    def position(self, stream: str) -> int:
        """The last sequence of ``stream`` recorded as processed (0 before the first):
        a reader starts after it. Cut into slices: the lowest of the slices held."""
        if self.slices is None:
            return self.tracked(self.policy.tracking_name(stream), stream)
        return min(self.slice_position(stream, k) for k in self.held or range(self.slices))

    def slice_position(self, stream: str, slice_: int) -> int:
        """The last sequence of ``stream`` recorded as processed in slice ``slice_``."""
        self.policy.translator(stream)
        return self.tracked(self.policy.slice_tracking_name(stream, slice_), stream)

    def forget_slices(self, slices: frozenset[int]) -> None:
        """Read these slices' tracking records again next time (a worker gained them)."""
        for stream in self.policy.streams:
            for k in slices:
                self.forget(self.policy.slice_tracking_name(stream, k))

    def settle(
        self, messages: Sequence[StreamMessage], passed: dict[str, int], streams: dict[str, str]
    ) -> None:
        """Have every held slice's record move to the end of ``messages`` (each of its
        messages up to there was processed, in this batch or before), once in a while;
        until then, keep the ends for :meth:`settle_now`."""
        if self.slices is None or not messages:
            return
        ends: dict[str, int] = {}
        for message in messages:
            ends[message.stream] = message.sequence
        now = time.monotonic()
        if now - self._settled < self.settle_every:
            self._unsettled.update(ends)
            return
        self._settled = now
        self._unsettled.clear()
        self._settle_to(ends, passed, streams)

    def settle_now(self) -> None:
        """Move the held slices' records to the ends of the batches applied since they
        were last moved (a worker whose streams went quiet)."""
        passed: dict[str, int] = {}
        streams: dict[str, str] = {}
        self._settle_to(self._unsettled, passed, streams)
        self._unsettled.clear()
        self._settled = time.monotonic()
        self.record_passed(passed, streams)

    def _settle_to(
        self, ends: dict[str, int], passed: dict[str, int], streams: dict[str, str]
    ) -> None:
        for stream, end in ends.items():
            names = self.slice_names(stream)
            for k in self.held:
                name = names[k]
                if end > max(passed.get(name, 0), self.tracked(name, stream)):
                    passed[name] = end
                    streams[name] = stream

    def record_passed(self, passed: dict[str, int], streams: dict[str, str]) -> None:
        """One tracking record for the messages passed over at the end of a batch (cut
        into slices: one fenced write moving every slice's)."""
        moves = {n: s for n, s in passed.items() if s > self.tracked(n, streams[n])}
        if not moves:
            return
        if self.slices is None:
            for name, sequence in moves.items():
                with contextlib.suppress(IntegrityError):  # another runner went further
                    self.recorder.insert_tracking(Tracking(name, sequence))
                self.forget(name)
            return
        stream = next(iter(streams.values()))
        try:
            self.recorder.insert_tracking(self.tracking(stream, moves))
        except IntegrityError:  # another worker moved one: read them again
            for name in moves:
                self.forget(name)
        else:
            self.moved(moves)
