"""A system: the composition root naming the contexts, projections and policies the CLI
runs."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from toolkit.errors import ConfigurationError
from toolkit.read.projection import Projection
from toolkit.write.context import BoundedContext

if TYPE_CHECKING:  # only the HTTP boundary imports FastAPI; the CLI's other commands never do
    import asyncio

    from fastapi import APIRouter

    from toolkit.commands import CommandQueue
    from toolkit.nats.connection import Connection
    from toolkit.react.policy import Policy
    from toolkit.read.workqueue import WorkQueue, WorkStats
    from toolkit.readmodels import ReadModelHome

RouterFactory = Callable[["ReadModelHome"], "APIRouter"]
"""Read endpoints of one projection: ``factory(home) -> APIRouter``."""
CommandRouterFactory = Callable[[Any], "APIRouter"]
"""Command endpoints of one context: ``factory(context) -> APIRouter``."""


class Work(Protocol):
    """A work queue's consumer (see :mod:`toolkit.read.workqueue`): its queue, and one
    worker of the pool that competes for its jobs until ``stop`` is set."""

    @property
    def queue(self) -> WorkQueue: ...

    async def worker(self, name: str, stop: asyncio.Event) -> WorkStats: ...


WorkFactory = Callable[["Connection", Path], Work]
"""A work queue, as ``toolkit work <name>`` runs it: ``factory(nats, data_dir) -> Work``."""


@dataclass(frozen=True)
class System:
    contexts: dict[str, type[BoundedContext[Any]]] = field(default_factory=dict)
    projections: dict[str, type[Projection]] = field(default_factory=dict)
    routers: dict[str, RouterFactory] = field(default_factory=dict)
    """Read endpoints, by projection name."""
    commands: dict[str, CommandRouterFactory] = field(default_factory=dict)
    """Command endpoints, by context name: ``factory(context) -> APIRouter``. The API
    process then owns that context's log, and runs its relay (woken after each save)."""
    title: str | None = None
    """The API's title (OpenAPI, ``/docs``); None: one made from the system's module name."""
    work_queues: dict[str, WorkFactory] = field(default_factory=dict)
    """Work queues (competing consumers, not read models), by name: what ``toolkit work
    <name>`` runs."""
    policies: dict[str, type[Policy[Any]]] = field(default_factory=dict)
    """Policies (a context reacting to other contexts' events), by name: what ``toolkit
    react <name>`` runs, each on the context of :attr:`contexts` it names."""
    command_queues: dict[str, CommandQueue[Any]] = field(default_factory=dict)
    """Commands queued for a context (:mod:`toolkit.commands`), by context name: what
    ``toolkit commands <context>`` runs the workers of."""

    def context(self, name: str) -> type[BoundedContext[Any]]:
        try:
            return self.contexts[name]
        except KeyError:
            known = ", ".join(sorted(self.contexts)) or "none"
            raise ConfigurationError(f"no context named {name!r} (known: {known})") from None

    def projection(self, name: str) -> type[Projection]:
        try:
            return self.projections[name]
        except KeyError:
            known = ", ".join(sorted(self.projections)) or "none"
            raise ConfigurationError(f"no projection named {name!r} (known: {known})") from None

    def policy(self, name: str) -> type[Policy[Any]]:
        try:
            return self.policies[name]
        except KeyError:
            known = ", ".join(sorted(self.policies)) or "none"
            raise ConfigurationError(f"no policy named {name!r} (known: {known})") from None

    def policy_context(self, policy: type[Policy[Any]]) -> type[BoundedContext[Any]]:
        """The context class ``policy`` runs on: the one of :attr:`contexts` it names,
        which must be (a subclass of) the context class it is a policy of."""
        name = policy.context_name()
        context = self.contexts.get(name)
        if context is None:
            known = ", ".join(sorted(self.contexts)) or "none"
            raise ConfigurationError(
                f"policy {policy.name} runs on context {name!r}, which the system does not "
                f"declare (known: {known})"
            )
        wanted = policy.context_class()
        if wanted is not None and not issubclass(context, wanted):
            raise ConfigurationError(
                f"policy {policy.name} is a policy of {wanted.__name__}, but the system's "
                f"context {name!r} is {context.__name__}"
            )
        return context

    def command_queue(self, name: str) -> CommandQueue[Any]:
        """The command queue of context ``name``, checked against the context the system
        declares under that name (the queue's context class, or a subclass of it)."""
        queue = self.command_queues.get(name)
        if queue is None:
            known = ", ".join(sorted(self.command_queues)) or "none"
            raise ConfigurationError(f"no command queue of context {name!r} (known: {known})")
        context = self.context(name)
        if queue.context != name or not issubclass(context, queue.context_class):
            raise ConfigurationError(
                f"the command queue declared for context {name!r} is {queue.context}'s "
                f"({queue.context_class.__name__}), but the system's context {name!r} is "
                f"{context.__name__}"
            )
        return queue

    def work_queue(self, name: str) -> WorkFactory:
        try:
            return self.work_queues[name]
        except KeyError:
            known = ", ".join(sorted(self.work_queues)) or "none"
            raise ConfigurationError(f"no work queue named {name!r} (known: {known})") from None


def title_of(system: System, spec: str) -> str:
    """The system's title, or a readable one made from where it lives (``shop.system:system``
    is "Shop"): the module's last part that is not a generic name, else the attribute."""
    if system.title:
        return system.title
    module, _, attribute = spec.partition(":")
    generic = {"system", "systems", "app", "main", "api", "__init__"}
    named = [part for part in module.split(".") if part and part not in generic]
    words = (named[-1] if named else attribute or "toolkit").replace("_", " ").replace("-", " ")
    return words.strip().capitalize() or "Toolkit"


def load_system(spec: str, app_dir: Path | None = None) -> System:
    """Import ``module:attribute`` and check it is a :class:`System`. The module is looked
    for in ``app_dir`` (default: the current folder) first, then on ``sys.path``: the
    ``toolkit`` console script, unlike ``python -m``, does not put the current folder there."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"system {spec!r} must look like 'package.module:attribute'")
    folder = str((app_dir or Path(".")).resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"cannot import system module {module_name!r} ({exc}); looked in {folder} "
            "(set --app-dir or TOOLKIT_APP_DIR to the folder holding it) and on sys.path"
        ) from None
    system = getattr(module, attribute, None)
    if not isinstance(system, System):
        raise ConfigurationError(f"{spec} is not a toolkit System")
    return system
