"""Workers of a context's command queue: competing consumers that run each command once.

Each command runs in one transaction of the context's log: the events its handler saves
and its outcome (:class:`~toolkit.commands.outcome.CommandOutcome`, whose id is derived
from the command's id). Whatever happens after that transaction, the command is never run
again: a redelivery (the worker was killed before acknowledging it, or did not answer
within ``ack_wait``), a second message of the same command, or a second worker running
it at the same moment (its transaction is refused) finds the outcome recorded and only
writes the status from it. The status is written after the log, then the message is
acknowledged; a worker killed between its transaction and its status leaves the status
pending until the command is redelivered (after ``ack_wait``), when the next worker
writes it from the outcome: done with its result but without a consistency token (the
log position is not known to it), or failed with its problem document. A
command that runs longer than ``ack_wait`` is kept (the worker says it is in progress
every third of it), so it is not handed to another meanwhile.

What ends a command:

- its handler returns: ``done``, with the save's consistency token and the result;
- its handler refuses it, :class:`~toolkit.errors.InvalidCommand` (422) or
  :class:`~toolkit.errors.UnknownAggregate` (404), or its body does not decode (422):
  ``failed`` at once, never retried (the refusal is recorded in the log as its outcome,
  so a redelivery does not run it again either);
- :class:`~toolkit.errors.ConflictError` (an aggregate changed by another command
  meanwhile) or any other failure: nothing was stored; tried again after
  ``retry_delay``, and on its ``max_deliver``-th delivery ``failed`` (409, or 500
  whose detail does not show the exception: the worker's log does).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import dataclass
from typing import Any, Generic

import msgspec
from eventsourcing.application import AggregateNotFoundError
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from typing_extensions import TypeVar

from toolkit import tracing
from toolkit.backoff import Backoff
from toolkit.commands.declaration import CommandQueue
from toolkit.commands.outcome import CommandOutcome, outcome_id
from toolkit.commands.queue import CONSUMER, QueueClient, canonical_id
from toolkit.commands.status import CommandStatus, now, problem_document
from toolkit.errors import ConflictError, InvalidCommand, UnknownAggregate
from toolkit.nats.connection import Connection
from toolkit.tracing import TRACEPARENT, TRACESTATE
from toolkit.wire.envelope import MSG_ID
from toolkit.write.causation import Causation
from toolkit.write.context import BoundedContext

C = TypeVar("C", bound=BoundedContext[Any])
log = logging.getLogger(__name__)


@dataclass
class Execution:
    """What running one delivery of a command came to."""

    state: str
    """``done``, ``failed``, or ``retry`` (nothing stored: deliver it again)."""
    result: Any = None
    problem: dict[str, Any] | None = None
    consistency_token: str | None = None
    duplicate: bool = False
    """Its outcome was recorded before (by this delivery's predecessor, or another)."""


@dataclass
class WorkerStats:
    done: int = 0
    failed: int = 0
    retried: int = 0
    duplicates: int = 0
    """Deliveries of commands whose outcome was recorded already: not run again."""
    refused: int = 0
    """Messages with no command id of the toolkit's form: terminated, never run."""


class CommandRunner(Generic[C]):
    """Runs commands of ``queue`` on ``context``, each once (no NATS: the worker hands
    it each delivery; a test can too)."""

    def __init__(self, queue: CommandQueue[C], context: C) -> None:
        self.queue = queue
        self.context = context

    def recorded(self, command_id: str) -> CommandOutcome | None:
        """The outcome recorded for ``command_id``, if any."""
        try:
            found: object = self.context.repository.get(outcome_id(self.queue.context, command_id))
        except AggregateNotFoundError:
            return None
        return found if isinstance(found, CommandOutcome) else None

    def run(
        self,
        command_id: str,
        name: str,
        data: bytes,
        *,
        last_try: bool,
        trace: tracing.Trace | None = None,
    ) -> Execution:
        """Run delivery ``data`` of command ``command_id`` named ``name``, unless its
        outcome is recorded already. ``last_try``: a failure other than a refusal ends
        it ``failed`` rather than asking for another delivery. Its events name the
        command as their cause and continue ``trace`` (the submitting request's), or a
        new one."""
        outcome = self.recorded(command_id)
        if outcome is not None:
            return _from(outcome)
        try:
            kind = self.queue.type(name)
            command = kind.decode(data)
        except InvalidCommand as exc:
            return self._fail(command_id, name, 422, str(exc))
        try:
            trace = trace or tracing.Trace(tracing.new_traceparent())
            cause = Causation(f"command:{command_id}", trace.trace_id, *trace)
            with self.context.recordings() as saved, self.context.processing(None, caused_by=cause):
                result = kind.handler(command, self.context)
                encoded = msgspec.json.encode(result).decode()
                self.context.save(
                    CommandOutcome.of(self.queue.context, command_id, name, result=encoded)
                )
        except InvalidCommand as exc:
            status = 404 if isinstance(exc, UnknownAggregate) else 422
            return self._fail(command_id, name, status, str(exc))
        except ConflictError as exc:
            outcome = self.recorded(command_id)
            if outcome is not None:  # another worker ran it first: its outcome stands
                return _from(outcome)
            if last_try:
                return self._fail(command_id, name, 409, str(exc))
            return Execution("retry")
        except Exception:
            log.exception("command %s %s of %s failed", name, command_id, self.queue.context)
            if last_try:
                detail = (
                    f"command {name} failed on each of its {self.queue.max_deliver} tries: "
                    "its worker's log says why"
                )
                return self._fail(command_id, name, 500, detail)
            return Execution("retry")
        position = self.context.published_language.last_published(saved)
        token = f"{self.context.name}:{position}"  # as toolkit.http.consistency's token_for
        return Execution("done", result=msgspec.json.decode(encoded), consistency_token=token)

    def _fail(self, command_id: str, name: str, status: int, detail: str) -> Execution:
        """Record that the command failed (so no delivery runs it again), unless another
        worker recorded its outcome first."""
        problem = problem_document(status, detail)
        outcome = CommandOutcome.of(
            self.queue.context, command_id, name, problem=msgspec.json.encode(problem).decode()
        )
        try:
            self.context.save(outcome)
        except ConflictError:
            found = self.recorded(command_id)
            if found is not None:
                return _from(found)
            raise
        return Execution("failed", problem=problem)


def _from(outcome: CommandOutcome) -> Execution:
    """The execution an outcome recorded earlier says."""
    if outcome.state == "failed":
        problem = msgspec.json.decode(outcome.problem or "null")
        return Execution("failed", problem=problem, duplicate=True)
    return Execution("done", result=msgspec.json.decode(outcome.result or "null"), duplicate=True)


class CommandWorker(Generic[C]):
    """One worker of a context's command queue: takes commands from the shared durable
    consumer and runs each with a :class:`CommandRunner` (in a thread: the log is
    synchronous), then writes its status and acknowledges it. Several run in a process
    (``toolkit commands <context> --workers N``) and in as many processes as wanted."""

    def __init__(self, runner: CommandRunner[C], client: Connection, *, name: str = "") -> None:
        self.runner = runner
        self.queue = runner.queue
        self.client = QueueClient(runner.queue, client)
        self.name = name
        self.stats = WorkerStats()

    async def work(self, stop: asyncio.Event, *, batch: int = 1) -> WorkerStats:
        """Take and run commands until ``stop`` is set. ``batch`` commands are fetched at
        once: each is held (its ``ack_wait`` running) until it is run, so a small batch
        leaves the others to the other workers."""
        trouble = Backoff(0.1, 2.0)
        sub = None
        while not stop.is_set():
            try:
                if sub is None:
                    sub = await self.client.js.pull_subscribe_bind(
                        durable=CONSUMER, stream=self.client.stream
                    )
                try:
                    messages = await sub.fetch(batch, timeout=0.25)
                except TimeoutError:  # nats-py raises its own and, at times, asyncio's
                    continue
                for message in messages:
                    await self._take(message)
                trouble.reset()
            except Exception as exc:  # NATS away, a consumer deleted: say so, go on
                log.warning("command worker %s: %s; again in %.1fs", self.name, exc, trouble.delay)
                await _unsubscribe(sub)
                sub = None
                await trouble.wait(stop)
        await _unsubscribe(sub)
        return self.stats

    async def _take(self, message: Msg) -> None:
        command_id = canonical_id((message.headers or {}).get(MSG_ID, ""))
        name = message.subject.rpartition(".")[2]
        if command_id is None:
            await message.term()
            self.stats.refused += 1
            log.warning(
                "command queue %s: a message on %s without a command id of the toolkit's "
                "form: not run", self.client.stream, message.subject,
            )  # fmt: skip
            return
        last_try = message.metadata.num_delivered >= self.queue.max_deliver
        headers = message.headers or {}
        trace = tracing.incoming(headers.get(TRACEPARENT), headers.get(TRACESTATE))
        run = functools.partial(self.runner.run, last_try=last_try, trace=trace)
        running = asyncio.ensure_future(asyncio.to_thread(run, command_id, name, message.data))
        while not (await asyncio.wait({running}, timeout=self.queue.ack_wait / 3))[0]:
            # a command that takes long is still held: not handed to another meanwhile
            with contextlib.suppress(Exception):
                await message.in_progress()
        execution = running.result()
        if execution.state == "retry":
            self.stats.retried += 1
            await message.nak(delay=self.queue.retry_delay)
            return
        status = CommandStatus(
            id=command_id,
            context=self.queue.context,
            command=name,
            state="done" if execution.state == "done" else "failed",
            accepted_at=now(),
            finished_at=now(),
            consistency_token=execution.consistency_token,
            result=execution.result,
            problem=execution.problem,
        )
        await self.client.finish(status)  # before the ack: a redelivery writes it otherwise
        await message.ack()
        if execution.duplicate:
            self.stats.duplicates += 1
        elif execution.state == "done":
            self.stats.done += 1
        else:
            self.stats.failed += 1


async def _unsubscribe(sub: JetStreamContext.PullSubscription | None) -> None:
    """Let go of ``sub`` (a client gone already has nothing to let go of)."""
    if sub is not None:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
