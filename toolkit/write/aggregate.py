"""Aggregate bases: UUID ids that follow the order aggregates are created in, and text
ids people chose.

:class:`Aggregate` is eventsourcing's ``Aggregate`` but for its new ids, UUID version 7
(RFC 9562: the creation time in milliseconds, then random bits; ``uuid-utils`` makes
them, monotonic within a millisecond) rather than version 4 (all random). A read model
keyed by them (billing's charges by order id, say) then takes each new row at the end
of its indexes instead of anywhere in them: a model of a million rows is written as
fast as one of a hundred thousand, from a page cache of a few MiB rather than one the
size of its index (see docs/benchmarks.md). Marten's sequential GUIDs are the same idea.
The price: an id tells when its aggregate was created (to the millisecond), to whoever
sees it; a context that must not say so subclasses eventsourcing's ``Aggregate`` instead.
Ids given (``id=``, or ``create_id`` from the arguments) are used as given.

:class:`TextAggregate` is for ids that are text people chose (a SKU, an ISBN, a user
name). eventsourcing's ``Aggregate`` insists on UUIDs: its events refuse any other id. Its
supported way to text ids is ``BaseAggregate[str]`` with events built on
``CanMutateAggregate[str]`` and ``CanInitAggregate[str]`` (eventsourcing's examples with
string ids do so). :class:`TextAggregate` is that base with the nested ``Event`` and
``Created`` classes declared, so that an aggregate with a text id is written exactly like
one on ``Aggregate``, and a type checker knows its ``id`` and its events'
``originator_id`` are ``str``.

A context that saves them declares it in its type, ``BoundedContext[UUID | str]`` (or
``BoundedContext[str]``): its log then stores text ids (see
:class:`~toolkit.write.context.BoundedContext`). Which ids a save accepts (not empty, no NUL,
at most :data:`toolkit.wire.MAX_ID_TOKEN` characters once encoded for a subject) is
checked by the context, on every log alike.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import eventsourcing.domain
from eventsourcing.domain import (
    BaseAggregate,
    CanInitAggregate,
    CanMutateAggregate,
    MetaDomainEvent,
)
from uuid_utils.compat import uuid7


class Aggregate(eventsourcing.domain.Aggregate):
    """eventsourcing's ``Aggregate`` whose new ids follow creation order (UUID version 7:
    see the module)."""

    @staticmethod
    def create_id(*_: Any, **__: Any) -> UUID:
        return uuid7()


class TextAggregate(BaseAggregate[str]):
    """Base of aggregates with text ids: create one with ``id=`` (its ``__init__`` may
    take ``id`` to see it), or define ``create_id`` from its arguments."""

    class Event(CanMutateAggregate[str], metaclass=MetaDomainEvent):
        originator_id: str
        originator_version: int
        timestamp: datetime

        def __post_init__(self) -> None:
            if type(self.originator_id) is not str:
                raise TypeError(
                    f"{type(self).__qualname__} needs a str originator_id, "
                    f"not {self.originator_id!r}"
                )

    class Created(Event, CanInitAggregate[str]):
        originator_topic: str
