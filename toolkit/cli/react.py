"""``toolkit react <policy>``: run one policy of the system on its context until stopped
(or, with ``--once``, until each stream it reads is processed up to its head)."""

from __future__ import annotations

import contextlib

from toolkit.cli.console import say, until_signalled
from toolkit.config import Settings
from toolkit.nats.connection import open_nats
from toolkit.react.deadletters import PolicyDeadLetters, dead_letters_path
from toolkit.react.reactor import Reactor
from toolkit.react.runner import PolicyRunner
from toolkit.system import System


async def react(
    settings: Settings,
    system: System,
    name: str,
    once: bool,
) -> None:
    """Run policy ``name`` on the context it names, built as ``toolkit relay`` builds it."""
    policy_class = system.policy(name)  # an unknown name: one clear line
    context_class = system.policy_context(policy_class)  # so is a context not declared
    policy = policy_class()
    context = context_class(data_dir=settings.data_dir)
    with (
        contextlib.closing(context),
        PolicyDeadLetters(dead_letters_path(settings.data_dir, policy.name)) as dead_letters,
    ):
        runner = PolicyRunner(policy, context)
        async with open_nats(settings, name=f"react-{name}") as nats:
            reactor = Reactor(runner, dead_letters, nats.connection)
            streams = ", ".join(policy.streams)
            say(f"reacting with {name} on context {context.name} to {streams} from {nats.url}")
            stats = await until_signalled(lambda stop: reactor.run(stop, until_head=once))
    say(
        f"{name}: {stats.reacted} reacted ({stats.events} events), {stats.skipped} skipped, "
        f"{stats.duplicates} duplicates, {stats.rejected} rejected, {stats.parked} parked; "
        f"positions {stats.positions}"
    )
