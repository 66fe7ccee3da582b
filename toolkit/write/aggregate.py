"""Aggregates whose ids are text people chose (a SKU, an ISBN, a user name), not UUIDs.

eventsourcing's ``Aggregate`` insists on UUIDs: its events refuse any other id. Its
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

from eventsourcing.domain import (
    BaseAggregate,
    CanInitAggregate,
    CanMutateAggregate,
    MetaDomainEvent,
)


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
