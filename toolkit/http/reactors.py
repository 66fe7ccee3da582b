"""The policies ``toolkit serve --policies`` runs in the API's process, as it runs the
relays of the contexts it serves: each one's reactor follows its streams on the relays'
NATS connection once that answers, reacting in a worker thread (the event loop serves
HTTP meanwhile), on the very context instance the API serves when it runs on one (so its
saves wake that context's in-process relay). Its lock is taken before the API starts
(``toolkit.cli``), so a policy running elsewhere refuses the whole serve. Each reports
as ``toolkit react`` does (``policy.<name>``), and one that stopped on an error is a
reason of ``/health/ready`` until it runs again (it is started again now and then).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import HTTPException

from toolkit.backoff import Backoff
from toolkit.config import Settings
from toolkit.http.feed import NatsLink
from toolkit.ops.reports import Reporter
from toolkit.react.deadletters import PolicyDeadLetters, dead_letters_path
from toolkit.react.reactor import Reactor
from toolkit.react.runner import PolicyRunner
from toolkit.system import System
from toolkit.write.context import BoundedContext

log = logging.getLogger(__name__)


class Reactors:
    """Policies run in this process, from :meth:`run` until its ``stop`` is set."""

    def __init__(
        self,
        system: System,
        settings: Settings,
        names: Sequence[str],
        served: dict[str, BoundedContext[Any]],
        link: NatsLink,
    ) -> None:
        self.link = link
        self.trouble: dict[str, str] = {}
        """Why a policy is not running, by name."""
        self.reactors: dict[str, Reactor[Any]] = {}
        self._own: list[BoundedContext[Any]] = []
        self._dead_letters: dict[str, PolicyDeadLetters] = {}
        self._runners: dict[str, PolicyRunner[Any]] = {}
        for name in names:
            policy_class = system.policy(name)
            context_class = system.policy_context(policy_class)
            context = served.get(context_class.name)
            if context is None:
                context = context_class(data_dir=settings.data_dir)
                self._own.append(context)
            self._runners[name] = PolicyRunner(policy_class(), context)
            path = dead_letters_path(settings.data_dir, name)
            self._dead_letters[name] = PolicyDeadLetters(path)

    def watch(self, reporter: Reporter) -> None:
        """Report on each as ``toolkit react`` does."""
        for name in self._runners:
            reporter.watch(
                f"policy.{name}",
                f"policy {name}",
                name=name,
                nats=lambda: self.link.trouble,
                position=functools.partial(self._sum, name, "positions"),
                backlog=functools.partial(self._sum, name, "lag"),
                failing=functools.partial(self._failing, name),
            )

    def _sum(self, name: str, what: str) -> int:
        reactor = self.reactors.get(name)
        return sum(getattr(reactor.stats, what).values()) if reactor else 0

    def _failing(self, name: str) -> str | None:
        reactor = self.reactors.get(name)
        return self.trouble.get(name) or (reactor.stats.failing if reactor else None)

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(*(self._run(name, stop) for name in self._runners))

    async def _run(self, name: str, stop: asyncio.Event) -> None:
        """The policy's reactor, started once NATS answers, started again after it stops
        on an error (after 1 s, then up to every 30 s)."""
        unreachable, stopped = Backoff(0.25, 5.0), Backoff(1.0, 30.0)
        while not stop.is_set():
            try:
                connection = await self.link.connection()
            except HTTPException as exc:
                self.trouble[name] = f"policy {name}: {exc.detail}"
                await unreachable.wait(stop)
                continue
            unreachable.reset()
            self.trouble.pop(name, None)
            runner, dead = self._runners[name], self._dead_letters[name]
            reactor = self.reactors[name] = Reactor(runner, dead, connection, threaded=True)
            try:
                await reactor.run(stop)
                return
            except Exception as exc:
                if reactor.stats.reacted:  # it got on, then broke again
                    stopped.reset()
                self.trouble[name] = f"policy {name} stopped: {exc}"
                log.error("policy %s stopped: %s; trying again in %.0fs", name, exc, stopped.delay)
            await stopped.wait(stop)

    def close(self) -> None:
        for dead in self._dead_letters.values():
            dead.close()
        for context in self._own:
            with contextlib.suppress(Exception):
                context.close()
