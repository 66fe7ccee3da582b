"""The testing kit's edges: failing projections, where it joins a stream, messages of
other publishers, and translators that cannot read an event."""

from __future__ import annotations

from typing import ClassVar

import msgspec
import pytest

from toolkit import ContractError, IntegrationEvent, ReadModelConnection, Translator, contract
from toolkit.errors import PoisonMessage
from toolkit.read.batches import Counts
from toolkit.read.projection import Projection, StartPosition
from toolkit.read.reader import StreamMessage
from toolkit.read.translator import UnknownEvent
from toolkit.testing import ProjectionHarness, PublishedEvent, relayed_event, translate, upcast


@contract("shop.Sold", version=1)
class Sold(IntegrationEvent, frozen=True, kw_only=True):
    item: str


class ItemSold(msgspec.Struct, frozen=True):
    item: str


shop = Translator("shop")


@shop.on(Sold)
def sold(e: Sold) -> ItemSold:
    return ItemSold(e.item)


class Sales(Projection):
    name: ClassVar[str] = "sold"
    translators = (shop,)

    def create_tables(self, db: ReadModelConnection) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS sold (item TEXT)")

    def apply(self, fact: object, db: ReadModelConnection) -> None:
        assert isinstance(fact, ItemSold)
        if fact.item == "bomb":
            raise ValueError("no bombs")
        db.execute("INSERT INTO sold VALUES (?)", (fact.item,))


def sales(*items: str, first: int = 1) -> list[PublishedEvent]:
    return [
        relayed_event(Sold(item=item), position=first + i, aggregate_id=item)
        for i, item in enumerate(items)
    ]


def test_a_failing_message_raises_by_default() -> None:
    with ProjectionHarness(Sales()) as harness, pytest.raises(PoisonMessage, match="no bombs"):
        harness.feed(sales("tea", "bomb"))


def test_a_failing_message_is_parked_as_the_projector_parks_it() -> None:
    with ProjectionHarness(Sales(), poison="park") as harness:
        counts = harness.feed(sales("tea", "bomb", "cup"))

        assert harness.query("SELECT item FROM sold ORDER BY item") == [("cup",), ("tea",)]
        assert (counts.applied, counts.dead_lettered) == (2, 1)
        (dead,) = harness.dead_letters
        assert (dead.sequence, dead.reason) == (2, "ValueError: no bombs (failed 4 times)")
        assert harness.checkpoint() == 3


def test_a_projection_that_starts_at_new_skips_what_came_before() -> None:
    class Later(Sales):
        starts_at: ClassVar[StartPosition] = "new"

    with ProjectionHarness(Later()) as harness:
        harness.heads["shop"] = 2  # the stream had these before the projection joined
        harness.feed(sales("pot", first=3))

        assert harness.query("SELECT item FROM sold") == [("pot",)]
        assert harness.checkpoint() == 3


def test_a_message_of_another_publisher_is_a_dead_letter() -> None:
    forged = StreamMessage("shop", 1, "shop.sale.x.Sold", {}, b'{"type":"shop.Sold"}')
    with ProjectionHarness(Sales()) as harness:
        counts = harness.feed([forged])

        assert counts.untrusted == 1
        assert "not published by the shop relay" in harness.dead_letters[0].reason


def test_streams_the_projection_does_not_read_are_not_read() -> None:
    other = relayed_event("billing.Paid", {"x": 1}, position=1)
    with ProjectionHarness(Sales()) as harness:
        counts = harness.feed([other])

        assert counts == Counts()
        assert harness.heads == {"billing": 1}
        assert (harness.checkpoint("billing"), harness.checkpoint()) == (0, 0)


def test_translate_and_upcast_say_what_a_translator_cannot_read() -> None:
    @contract("shop.Returned", version=1)
    class Returned(IntegrationEvent, frozen=True, kw_only=True):
        item: str

    assert translate(shop, Sold(item="tea")) == [ItemSold("tea")]
    assert upcast(shop, Sold(item="tea")) == Sold(item="tea")
    with pytest.raises(UnknownEvent):
        upcast(shop, Returned(item="tea"))
    with pytest.raises(ContractError, match=r"shop\.Sold v2 is newer"):
        upcast(shop, relayed_event("shop.Sold", {"item": "tea"}, version=2, position=1))
