"""Knowing when a log grows without asking it over and over.

In the context's own process the relay is woken by each save. A relay running on its own
polls the log, except on PostgreSQL, where eventsourcing's recorder sends a NOTIFY on
every insert: a :class:`LogWatcher` LISTENs for it on a thread of its own and wakes the
relay at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from eventsourcing.persistence import ApplicationRecorder

log = logging.getLogger(__name__)


class LogWatcher:
    """Calls ``on_change()`` (from its own thread) whenever the log is written."""

    def __init__(self, recorder: ApplicationRecorder, on_change: Callable[[], None]) -> None:
        self.recorder = recorder
        self.on_change = on_change
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def pushes(self) -> bool:
        """Whether this log announces its writes (PostgreSQL) or must be polled."""
        return hasattr(self.recorder, "channel_name") and hasattr(self.recorder, "datastore")

    def start(self) -> bool:
        if not self.pushes:
            return False
        self._thread = threading.Thread(target=self._listen, name="log-watcher", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _listen(self) -> None:
        from psycopg.sql import SQL, Identifier

        recorder: Any = self.recorder
        while not self._stopping.is_set():
            try:
                with recorder.datastore.get_connection() as conn:
                    conn.execute(SQL("LISTEN {0}").format(Identifier(recorder.channel_name)))
                    conn.commit()
                    self.on_change()  # anything written while not listening is seen now
                    while not self._stopping.is_set():
                        for _ in conn.notifies(timeout=0.25, stop_after=1):
                            self.on_change()
            except Exception as exc:  # the database went away: polling covers the gap
                log.warning("log watcher: %s; listening again in 1s", exc)
                self._stopping.wait(1.0)
