"""``toolkit commands <context>``: run workers of a context's command queue until stopped
(:mod:`toolkit.commands`): they compete with every other worker of the queue, in this
process and any other, for the commands the API queued."""

from __future__ import annotations

import asyncio
import contextlib
import os

from toolkit.cli.console import say, until_signalled
from toolkit.commands import CommandRunner, CommandWorker, QueueClient, WorkerStats
from toolkit.config import Settings
from toolkit.nats.connection import open_nats
from toolkit.system import System


async def run_commands(settings: Settings, system: System, name: str, workers: int) -> None:
    """Run ``workers`` workers of context ``name``'s command queue on the context, built
    as ``toolkit relay`` builds it."""
    queue = system.command_queue(name)  # an unknown name: one clear line
    context = system.context(name)(data_dir=settings.data_dir)
    with contextlib.closing(context):
        async with open_nats(settings, name=f"commands-{name}") as nats:
            client = QueueClient(queue, nats.connection)
            await client.ensure(consumer=True)
            runner = CommandRunner(queue, context)
            tag = f"{name}-{os.getpid()}"
            pool = [
                CommandWorker(runner, nats.connection, name=f"{tag}-{i}") for i in range(workers)
            ]
            say(
                f"running commands of {name}: {workers} worker(s) on stream {client.stream} "
                f"at {nats.url}"
            )

            async def work(stop: asyncio.Event) -> list[WorkerStats]:
                return await asyncio.gather(*(worker.work(stop) for worker in pool))

            stats = await until_signalled(work)
    say(
        f"{name}: {sum(s.done for s in stats)} done, {sum(s.failed for s in stats)} failed, "
        f"{sum(s.retried for s in stats)} retried, {sum(s.duplicates for s in stats)} "
        f"run before (not run again), {sum(s.refused for s in stats)} refused"
    )
