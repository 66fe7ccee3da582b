"""Module paths of toolkit 0.1, kept importable for one release with a DeprecationWarning.

``import toolkit.store`` gives the very module now at ``toolkit.read.store`` (one module
object, so attributes set or patched through either name are the same), after a warning
that names the new path. Remove this module, and its import in ``toolkit/__init__``, in
the release after next.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

MOVED = {
    "toolkit.aggregate": "toolkit.write.aggregate",
    "toolkit.auth": "toolkit.http.auth",
    "toolkit.caching": "toolkit.http.caching",
    "toolkit.connection": "toolkit.nats.connection",
    "toolkit.consistency": "toolkit.http.consistency",
    "toolkit.context": "toolkit.write.context",
    "toolkit.contracts": "toolkit.wire.contracts",
    "toolkit.demo": "toolkit.cli.demo",
    "toolkit.embedded": "toolkit.nats.embedded",
    "toolkit.feed": "toolkit.http.feed",
    "toolkit.health": "toolkit.http.health",
    "toolkit.home": "toolkit.readmodels.sqlite",
    "toolkit.home_postgres": "toolkit.readmodels.postgres",
    "toolkit.jetstream_log": "toolkit.logs.jetstream",
    "toolkit.outbox": "toolkit.write.outbox",
    "toolkit.postgres_log": "toolkit.logs.postgres",
    "toolkit.problems": "toolkit.http.problems",
    "toolkit.projection": "toolkit.read.projection",
    "toolkit.projector": "toolkit.read.projector",
    "toolkit.published": "toolkit.write.published",
    "toolkit.reader": "toolkit.read.reader",
    "toolkit.readmodel": "toolkit.readmodels.interface",
    "toolkit.relay": "toolkit.write.relay",
    "toolkit.relay_lock": "toolkit.write.relay_lock",
    "toolkit.replay": "toolkit.read.replay",
    "toolkit.reports": "toolkit.ops.reports",
    "toolkit.resources": "toolkit.http.resources",
    "toolkit.status": "toolkit.ops.status",
    "toolkit.store": "toolkit.read.store",
    "toolkit.streams": "toolkit.nats.streams",
    "toolkit.transcoder": "toolkit.write.transcoder",
    "toolkit.translator": "toolkit.read.translator",
    "toolkit.watch": "toolkit.write.watch",
    "toolkit.workqueue": "toolkit.read.workqueue",
}
"""Old module path -> new one."""


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        # Warned here, when the old path is imported, not when a tool only looks it up.
        warnings.warn(
            f"{spec.name} moved to {self.new}; the old path goes in the next release",
            DeprecationWarning,
            stacklevel=_importer(),
        )
        module = importlib.import_module(self.new)
        self.spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system stamped the alias's spec on the real module: give it back.
        module.__spec__ = self.spec


class MovedModules(importlib.abc.MetaPathFinder):
    """Finds the old paths in :data:`MOVED`; importing one warns (once: then it is in
    ``sys.modules``)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(new))


def _importer() -> int:
    """The stack level of the frame that imported, past the import system's own."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith("<frozen importlib"):
        frame, level = frame.f_back, level + 1
    return level + 1


def install() -> None:
    if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(MovedModules())
