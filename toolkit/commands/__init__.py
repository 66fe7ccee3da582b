"""Commands through a queue owned by the context (queue-based load levelling).

A context may take commands asynchronously: the HTTP boundary accepts one with ``202
Accepted`` and the ``Location`` of its status resource, queues it on the context's own
JetStream work-queue stream, and workers (competing consumers, in any number of
processes) run it on the context. Its status says ``pending``, then ``done`` (the
consistency token of its save and its result) or ``failed`` (a problem document). An
``Idempotency-Key`` makes a retried request the same command.

- :mod:`~toolkit.commands.declaration`: what a context declares (:class:`CommandQueue`:
  the command types and their handlers);
- :mod:`~toolkit.commands.queue`: the stream, the status bucket, submitting a command and
  reading its status (:class:`QueueClient`);
- :mod:`~toolkit.commands.status`: a command's status (:class:`CommandStatus`);
- :mod:`~toolkit.commands.outcome`: the outcome recorded in the context's log with the
  command's events, which makes each command run once;
- :mod:`~toolkit.commands.worker`: running commands (:class:`CommandRunner`) and the
  workers (:class:`CommandWorker`, ``toolkit commands <context>``).

The HTTP routes are :func:`toolkit.http.queued.command_queue_router`'s.
"""

from toolkit.commands.declaration import CommandQueue, CommandType
from toolkit.commands.queue import QueueClient
from toolkit.commands.status import CommandStatus
from toolkit.commands.worker import CommandRunner, CommandWorker, Execution, WorkerStats

__all__ = [
    "CommandQueue",
    "CommandRunner",
    "CommandStatus",
    "CommandType",
    "CommandWorker",
    "Execution",
    "QueueClient",
    "WorkerStats",
]
