"""A bounded context: an ``eventsourcing`` Application whose log is a SQLite file by
default, whose name names its stream, and whose published language says what leaves it.

Persistence is eventsourcing's own: set ``PERSISTENCE_MODULE`` (and its variables, e.g.
``POSTGRES_DBNAME``) to use PostgreSQL, or ``toolkit.jetstream_log`` (with ``NATS_URL``)
for a JetStream stream ``<name>_log``; otherwise the log is ``<data_dir>/<name>.sqlite``.
Events are stored with :class:`~toolkit.transcoder.OrjsonTranscoder` unless
``TRANSCODER_TOPIC`` names another; its format is eventsourcing's own.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import IntegrityError, Recording
from eventsourcing.utils import Environment, EnvType

from toolkit.errors import ConflictError
from toolkit.published import PublishedLanguage
from toolkit.wire import check_name


class BoundedContext(Application[UUID]):
    """Base for a context's write side. Subclasses set ``name`` and ``published_language``."""

    name = "context"
    published_language: ClassVar[PublishedLanguage]

    def __init__(self, env: EnvType | None = None, *, data_dir: Path | str | None = None) -> None:
        check_name("context", self.name)
        self.data_dir = Path(data_dir or os.environ.get("TOOLKIT_DATA_DIR") or ".toolkit")
        self._saved_listeners: list[Callable[[list[Recording[Any]]], None]] = []
        self._listeners_lock = threading.Lock()
        self._recorded = threading.local()
        super().__init__(env)

    def construct_env(self, name: str, env: EnvType | None = None) -> Environment:
        environment = super().construct_env(name, env)
        if not environment.get("TRANSCODER_TOPIC"):
            environment["TRANSCODER_TOPIC"] = "toolkit.transcoder:OrjsonTranscoder"
        if not environment.get("PERSISTENCE_MODULE"):
            self.data_dir.mkdir(parents=True, exist_ok=True)
            environment["PERSISTENCE_MODULE"] = "eventsourcing.sqlite"
            if not environment.get("SQLITE_DBNAME"):
                environment["SQLITE_DBNAME"] = str(self.data_dir / f"{self.name}.sqlite")
        return environment

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[UUID]]:
        """Save like eventsourcing does; a concurrent change of the same aggregate raises
        :class:`~toolkit.errors.ConflictError` and stores nothing of this save."""
        try:
            return super().save(*objs, **kwargs)
        except IntegrityError:
            raise ConflictError(
                "an aggregate was changed by another command since it was loaded; "
                "nothing was saved: reload it and try again"
            ) from None

    def on_saved(self, listener: Callable[[list[Recording[Any]]], None]) -> Callable[[], None]:
        """Call ``listener(recordings)`` after each save has committed (from the saving
        thread, in the order listeners were added); returns a function that removes it.
        The in-process relay wakes this way, and its outbox takes the saved events."""
        with self._listeners_lock:
            self._saved_listeners.append(listener)

        def remove() -> None:
            with self._listeners_lock, contextlib.suppress(ValueError):
                self._saved_listeners.remove(listener)

        return remove

    @contextlib.contextmanager
    def recordings(self) -> Iterator[list[Recording[Any]]]:
        """Collect what this thread saves inside the block (e.g. to answer a command
        with a consistency token, see :mod:`toolkit.consistency`)."""
        outer = getattr(self._recorded, "into", None)
        collected: list[Recording[Any]] = []
        self._recorded.into = collected
        try:
            yield collected
        finally:
            self._recorded.into = outer
            if outer is not None:
                outer.extend(collected)

    def _notify(self, recordings: list[Recording[Any]]) -> None:
        if not recordings:
            return
        into = getattr(self._recorded, "into", None)
        if into is not None:
            into.extend(recordings)
        with self._listeners_lock:
            listeners = list(self._saved_listeners)
        for listener in listeners:
            listener(recordings)
