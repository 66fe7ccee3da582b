"""``toolkit react <policy>``: run one policy of the system on its context until stopped
(or, with ``--once``, until each stream it reads is processed up to its head), holding
the policy's lock (:mod:`toolkit.react.lock`) and reporting to ``toolkit status``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from toolkit.cli.console import say, until_signalled
from toolkit.config import Settings
from toolkit.errors import ConfigurationError, PolicyBusyError
from toolkit.nats.connection import Nats, open_nats
from toolkit.ops.reports import Reporter
from toolkit.react.deadletters import PolicyDeadLetters, dead_letters_path
from toolkit.react.lock import busy, policy_lock
from toolkit.react.policy import Policy
from toolkit.react.reactor import Reactor, ReactorStats
from toolkit.react.runner import PolicyRunner
from toolkit.react.slices import SliceReactor, policy_leases
from toolkit.system import System
from toolkit.write.context import BoundedContext
from toolkit.write.relay_lock import RelayLease, relay_lease


async def react(
    settings: Settings,
    system: System,
    name: str,
    once: bool,
    standby: bool = False,
) -> None:
    """Run policy ``name`` on the context it names, built as ``toolkit relay`` builds it;
    with ``standby``, wait while another reactor of it runs, and take over when it stops
    or dies (and stand by again should this one lose the lock)."""
    policy_class = system.policy(name)  # an unknown name: one clear line
    context_class = system.policy_context(policy_class)  # so is a context not declared
    policy = policy_class()
    context = context_class(data_dir=settings.data_dir)
    role = f"toolkit react {name}"

    if policy.slices is not None:
        with contextlib.closing(context), policy_lock(context, name, role, shared=True):
            async with open_nats(settings, name=f"react-{name}") as nats:
                stats = await until_signalled(
                    lambda stop: _react_sliced(settings, nats, policy, context, stop, once)
                )
        _said(name, stats)
        return

    def waiting(holder: str) -> None:
        say(f"standing by: policy {name} runs ({holder}); taking over when it stops")

    async def reacting(stop: asyncio.Event) -> ReactorStats | None:
        stats: ReactorStats | None = None
        while not stop.is_set():
            async with relay_lease(
                context, role, stop, standby=standby, waiting=waiting, nats=nats.connection,
                ttl=settings.lease_ttl, replicas=settings.stream_replicas,
                kind=f"policy-{policy.name}", busy=busy(policy.name, standby_hint=True),
            ) as lease:  # fmt: skip
                if lease is None:
                    return stats
                stats = await _react_held(settings, nats, policy, context, lease, stop, once)
            if once or not lease.lost.is_set():
                return stats
            lost = f"policy {name} lost its lock to {lease.holder or 'another reactor'}"
            if not standby:
                raise PolicyBusyError(f"{lost}: stopped")
            say(f"{lost}: standing by")
        return stats

    with contextlib.closing(context):
        async with open_nats(settings, name=f"react-{name}") as nats:
            stats = await until_signalled(reacting)
    _said(name, stats)


def _said(name: str, stats: ReactorStats | None) -> None:
    if stats is not None:
        elsewhere = f", {stats.elsewhere} of other workers' slices" if stats.elsewhere else ""
        say(
            f"{name}: {stats.reacted} reacted ({stats.events} events), {stats.skipped} "
            f"skipped, {stats.duplicates} duplicates, {stats.rejected} rejected, "
            f"{stats.parked} parked, {stats.held} held behind them{elsewhere}; positions "
            f"{stats.positions}"
        )


async def _react_sliced(
    settings: Settings,
    nats: Nats,
    policy: Policy[Any],
    context: BoundedContext[Any],
    stop: asyncio.Event,
    once: bool,
) -> ReactorStats:
    """React as one of the workers of a policy cut into slices, on what its leases give."""
    name = policy.name
    with PolicyDeadLetters(dead_letters_path(settings.data_dir, name)) as dead_letters:
        runner = PolicyRunner(policy, context)
        leases = policy_leases(
            nats.connection, policy, ttl=settings.lease_ttl, replicas=settings.stream_replicas
        )
        async with Reporter(settings.data_dir) as reporter:
            reactor = SliceReactor(runner, dead_letters, nats.connection, leases)
            watch(reporter, reactor, lambda: nats.connection.trouble)
            say(
                f"reacting with {name} on context {context.name} to "
                f"{', '.join(policy.streams)} from {nats.url}: one of the workers sharing its "
                f"{policy.slices} slices ({leases.worker})"
            )
            return await reactor.run(stop, until_head=once)


async def _react_held(
    settings: Settings,
    nats: Nats,
    policy: Policy[Any],
    context: BoundedContext[Any],
    lease: RelayLease,
    stop: asyncio.Event,
    once: bool,
) -> ReactorStats:
    """React while holding the policy's lock: until ``stop`` is set or the lock is lost.
    The runner reads where to go on from the tracking records, as they are now."""
    name = policy.name
    ends = asyncio.Event()  # stop, or the lock lost
    watching = [asyncio.create_task(event.wait()) for event in (stop, lease.lost)]
    for task in watching:
        task.add_done_callback(lambda _: ends.set())
    try:
        with PolicyDeadLetters(dead_letters_path(settings.data_dir, name)) as dead_letters:
            runner = PolicyRunner(policy, context)
            async with Reporter(settings.data_dir) as reporter:
                reactor = Reactor(runner, dead_letters, nats.connection)
                watch(reporter, reactor, lambda: nats.connection.trouble)
                streams = ", ".join(policy.streams)
                took = "took over: " if lease.waited else ""
                say(
                    f"{took}reacting with {name} on context {context.name} to {streams} "
                    f"from {nats.url}"
                )
                return await reactor.run(ends, until_head=once)
    finally:
        for task in watching:
            task.cancel()


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
    declares but those cut into slices, whose workers are ``toolkit react``), each one's
    lock held in ``locks``; a policy running elsewhere refuses the whole serve, with one
    line."""
    if "all" in asked and "all" not in system.policies:
        if len(asked) > 1:
            raise ConfigurationError("--policies takes 'all' or names, not both")
        names = [n for n in system.policies if system.policy(n).slices is None]  # (workers)
    else:
        names = list(dict.fromkeys(asked))
    for name in names:
        policy_class = system.policy(name)  # an unknown name: one clear line
        if policy_class.slices is not None:
            raise ConfigurationError(
                f"policy {name} is cut into {policy_class.slices} slices: run it with "
                f"`toolkit react {name}` workers (as many as you like), not in serve"
            )
        context = system.policy_context(policy_class)(data_dir=settings.data_dir)
        try:
            locks.enter_context(policy_lock(context, name, "toolkit serve"))
        except PolicyBusyError as exc:
            raise PolicyBusyError(f"{exc} (or serve without it in --policies)") from None
        finally:
            context.close()
    return names
