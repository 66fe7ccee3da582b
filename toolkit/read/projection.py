"""Projections: read models a context keeps from what other contexts publish.

A projection names the streams it reads through its translators, creates its tables, and
applies its own facts to them. The toolkit writes the changes and the checkpoint of each
stream in one transaction, many events at a time.

A projection writes through the read model's own DB-API connection (see
:class:`toolkit.readmodels.interface.Connection`): ``sqlite3`` by default, ``psycopg`` on
PostgreSQL. It declares the SQL dialects its statements work in (``dialects``) and can
ask the connection which one it has (``db.dialect``, with ``db.dialect.param`` the
placeholder).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from datetime import datetime
from itertools import groupby
from typing import ClassVar, Literal

from toolkit.read.translator import Translator
from toolkit.readmodels import Connection, Dialect
from toolkit.wire import check_name

StartPosition = Literal["beginning", "new"] | int | datetime


class Projection(ABC):
    """Base of a projection. Subclasses set ``name``, ``version`` and ``translators``
    (and ``dialects`` when their SQL works on PostgreSQL too), and implement
    :meth:`create_tables` and :meth:`apply`."""

    name: ClassVar[str]
    version: ClassVar[int] = 1
    """Bump when the read model's shape or meaning changes: it then needs a rebuild."""
    translators: ClassVar[Sequence[Translator]]
    starts_at: ClassVar[StartPosition] = "beginning"
    """Where the projection joins a stream the first time: ``"beginning"``, ``"new"``
    (only events published after it joins), a stream sequence, or a time. Afterwards
    it always goes on from its checkpoint."""
    on_poison: ClassVar[Literal["park-aggregate", "skip-event"]] = "park-aggregate"
    """When a message keeps failing, or cannot be read (a contract version newer than
    the translator knows, a broken contract): park it and every later message of its
    aggregate (per-aggregate order holds), or park only it and carry on."""
    on_untrusted: ClassVar[Literal["dead-letter", "skip"]] = "dead-letter"
    """A message on a stream that its relay did not publish (another client's, or
    malformed: see :func:`toolkit.wire.relay_position`): keep it in the dead letters with
    the reason, or skip it and only count it. Either way it moves no log position and
    parks nothing, so it cannot hide the relay's events."""
    retries: ClassVar[int] = 3
    """Tries after the first before a failing message is parked."""
    retry_delay: ClassVar[float] = 0.2
    """Seconds before the first retry; doubled for each next one."""
    slices: ClassVar[int | None] = None
    """How many slices the projection's work is cut into, for any number of ``toolkit
    project`` workers to share by lease (:mod:`toolkit.read.slices`): each slice is
    applied in order by one worker at a time. Chosen once (64 or 256 suit most), and
    recorded with the read model: changing it takes a replay. None (the default): the
    projection cannot be split, and one worker keeps it. Declare slices only when
    facts of different keys (:meth:`slice_key`) may be applied in any order."""
    dialects: ClassVar[Collection[str]] = (Dialect.SQLITE,)
    """The read-model backends whose SQL the projection speaks: ``"sqlite"`` and
    ``"postgresql"`` (:class:`~toolkit.readmodels.interface.Dialect`); any other is refused."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            check_name("projection", cls.name)

    @abstractmethod
    def create_tables(self, db: Connection) -> None:
        """Create the read model's tables (``CREATE TABLE IF NOT EXISTS``)."""

    @abstractmethod
    def apply(self, fact: object, db: Connection) -> None:
        """Change the read model for one fact, inside the toolkit's transaction."""

    def apply_batch(self, facts: list[object], db: Connection) -> None:
        """Change the read model for a batch of facts, in their order, inside the
        toolkit's transaction: each run of consecutive facts of one type goes to
        :meth:`apply_many`."""
        for _, run in groupby(facts, type):
            self.apply_many(list(run), db)

    def apply_many(self, facts: list[object], db: Connection) -> None:
        """Apply consecutive facts of one type. Override it to write many rows a
        statement (``executemany``) or to fold many facts into one update; the result
        must equal applying them one by one with :meth:`apply`."""
        apply = self.apply
        for fact in facts:
            apply(fact, db)

    def slice_key(self, fact: object) -> str | None:
        """What orders a fact's application when the projection is cut into slices:
        facts of one key are applied in stream order, by one worker at a time. None (the
        default) keys a message by its aggregate. Override it to join aggregates (an
        account and its customer's orders, keyed by the customer)."""
        return None

    def translator_for(self, stream: str) -> Translator:
        for translator in self.translators:
            if translator.stream == stream:
                return translator
        raise KeyError(stream)
