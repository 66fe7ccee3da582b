"""A context that declares no published language publishes nothing: its events stay
private, and everything that reads its language (the relay's outbox, consistency tokens,
status, queued commands) works on it instead of failing on a missing attribute."""

from __future__ import annotations

from uuid import UUID

from eventsourcing.domain import Aggregate, event

from toolkit import BoundedContext, PublishedLanguage
from toolkit.testing import in_memory, published_events


class Note(Aggregate):
    @event("Written")
    def __init__(self, text: str) -> None:
        self.text = text


class Diary(BoundedContext[UUID]):
    name = "diary"


class Journal(Diary):
    name = "journal"


def test_a_context_without_a_published_language_publishes_nothing() -> None:
    diary = in_memory(Diary)
    diary.save(Note(text="private"))
    assert published_events(diary) == []
    assert diary.published_language.context == "diary" and diary.published_language.topics == []


def test_each_subclass_has_a_language_of_its_own_name() -> None:
    assert Journal.published_language.context == "journal"
    assert Diary.published_language.context == "diary"
    assert isinstance(Journal.published_language, PublishedLanguage)
