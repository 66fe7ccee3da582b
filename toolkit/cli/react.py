"""``toolkit react <policy>``: run one policy of the system on its context until stopped
(or, with ``--once``, until each stream it reads is processed up to its head), holding
the policy's lock (:mod:`toolkit.react.lock`) and reporting to ``toolkit status``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from toolkit.cli.console import say, until_signalled
from toolkit.config import Settings
from toolkit.errors import ConfigurationError, PolicyBusyError
from toolkit.nats.connection import open_nats
from toolkit.ops.reports import Reporter
from toolkit.react.deadletters import PolicyDeadLetters, dead_letters_path
from toolkit.react.lock import policy_lock
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
        policy_lock(context, policy.name, f"toolkit react {name}"),
        PolicyDeadLetters(dead_letters_path(settings.data_dir, policy.name)) as dead_letters,
    ):
        runner = PolicyRunner(policy, context)
        async with (
            open_nats(settings, name=f"react-{name}") as nats,
            Reporter(settings.data_dir) as reporter,
        ):
            reactor = Reactor(runner, dead_letters, nats.connection)
            watch(reporter, reactor, lambda: nats.connection.trouble)
            streams = ", ".join(policy.streams)
            say(f"reacting with {name} on context {context.name} to {streams} from {nats.url}")
            stats = await until_signalled(lambda stop: reactor.run(stop, until_head=once))
    say(
        f"{name}: {stats.reacted} reacted ({stats.events} events), {stats.skipped} skipped, "
        f"{stats.duplicates} duplicates, {stats.rejected} rejected, {stats.parked} parked, "
        f"{stats.held} held behind them; positions {stats.positions}"
    )


def watch(reporter: Reporter, reactor: Reactor[Any], nats: Callable[[], str | None]) -> None:
    """Report on ``reactor`` as ``policy.<name>``: its position (the sum of its tracking
    records), its backlog (messages after them, as its readers last heard) and why a
    message's reaction fails while it is retried."""
    name = reactor.policy.name
    reporter.watch(
        f"policy.{name}",
        f"policy {name}",
        name=name,
        nats=nats,
        position=lambda: sum(reactor.stats.positions.values()),
        backlog=lambda: sum(reactor.stats.lag.values()),
        failing=lambda: reactor.stats.failing,
    )


def serve_policies(
    locks: contextlib.ExitStack, settings: Settings, system: System, asked: Sequence[str]
) -> list[str]:
    """The policies ``toolkit serve --policies`` names (``all``: every one the system
    declares), each one's lock held in ``locks``; a policy running elsewhere refuses
    the whole serve, with one line."""
    if "all" in asked and "all" not in system.policies:
        if len(asked) > 1:
            raise ConfigurationError("--policies takes 'all' or names, not both")
        names = list(system.policies)
    else:
        names = list(dict.fromkeys(asked))
    for name in names:
        policy_class = system.policy(name)  # an unknown name: one clear line
        context = system.policy_context(policy_class)(data_dir=settings.data_dir)
        try:
            locks.enter_context(policy_lock(context, name, "toolkit serve"))
        except PolicyBusyError as exc:
            raise PolicyBusyError(f"{exc} (or serve without it in --policies)") from None
        finally:
            context.close()
    return names
