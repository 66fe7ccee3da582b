"""Events a relay publishes again after its stream lost them come back with their log
positions, under sequences the tracking record may not know (another publisher's message
took one meanwhile). A policy passes them over by log position, as projections do, in the
process that reacted to them and after a restart (the position is kept in the policy's
file beside the log); what is new is still reacted to, and the tracking record moves on.

The contexts are test_policies' (shop publishes orders, depot packs and counts them).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_policies import Depot, OrderPlaced, Parcels, tracking
from toolkit.errors import PoisonMessage
from toolkit.react import PolicyRunner
from toolkit.react.deadletters import PolicyDeadLetters
from toolkit.read.reader import StreamMessage
from toolkit.testing import relayed_event

pytestmark = pytest.mark.timeout(30)


def order(sequence: int, position: int, item: str = "tea") -> StreamMessage:
    """shop's order of log position ``position``, at stream ``sequence``."""
    event = relayed_event(
        OrderPlaced(order_id=f"o{position}", item=item),
        position=position,
        aggregate_id=f"o{position}",
    )
    return event.message(sequence)


def test_events_published_again_under_new_sequences_are_not_reacted_to_again(
    tmp_path: Path,
) -> None:
    depot = Depot(data_dir=tmp_path)
    memory = PolicyDeadLetters(tmp_path / "parcels.sqlite")
    try:
        runner = PolicyRunner(Parcels(), depot, memory=memory)
        runner.apply([order(1, 1), order(2, 2), order(3, 3)])
        # The stream lost 2 and 3; a stranger's message took sequence 2, so the relay's
        # copies of 2 and 3 come at 3 and 4, then the new order 4 at 5.
        counts = runner.apply([order(3, 2), order(4, 3), order(5, 4, "jam")])
        assert (counts.reacted, counts.duplicates) == (1, 2)
        assert (depot.tally("tea"), depot.tally("jam")) == (3, 1)
        assert tracking(depot) == 5
    finally:
        depot.close()
        memory.close()

    # After a restart, with more copies of what was reacted to, under sequences never seen.
    depot = Depot(data_dir=tmp_path)
    memory = PolicyDeadLetters(tmp_path / "parcels.sqlite")
    try:
        runner = PolicyRunner(Parcels(), depot, memory=memory)
        counts = runner.apply([order(6, 3), order(7, 4), order(8, 5, "jam")])
        assert (counts.reacted, counts.duplicates) == (1, 2)
        assert (depot.tally("tea"), depot.tally("jam")) == (3, 2)
        assert tracking(depot) == 8 and memory.reacted_to() == {"shop": 5}
    finally:
        depot.close()
        memory.close()


def test_without_the_guard_they_would_be(tmp_path: Path) -> None:
    """The same copy handed to a runner that remembers nothing (what the guard is for): it
    is taken for a new event and reacted to again, which here the parcel's id refuses
    (another policy would simply act twice)."""
    depot = Depot(data_dir=tmp_path)
    try:
        PolicyRunner(Parcels(), depot).apply([order(1, 1), order(2, 2)])
        with pytest.raises(PoisonMessage, match="ConflictError"):
            PolicyRunner(Parcels(), depot).apply([order(3, 2)])  # no memory: order 2 again
    finally:
        depot.close()


def test_a_policy_cut_into_slices_knows_what_it_reacted_to_whole(tmp_path: Path) -> None:
    """Reacted to whole, then cut into slices: a copy of an event the whole policy reacted
    to, under a sequence past every slice's record, is passed over by log position (a
    slice remembers nothing of its own yet: the whole stream's memory covers it)."""
    from tests.integration.test_policy_slices import SlicedParcels

    depot = Depot(data_dir=tmp_path)
    memory = PolicyDeadLetters(tmp_path / "parcels.sqlite")
    try:
        PolicyRunner(Parcels(), depot, memory=memory).apply([order(1, 1), order(2, 2)])
        sliced = PolicyRunner(SlicedParcels(), depot, memory=memory)
        counts = sliced.apply([order(3, 2), order(4, 3)])  # 2 again, then the new 3
        assert (counts.reacted, counts.duplicates) == (1, 1)  # without: a ConflictError
        assert depot.tally("order-o3") == 1
        assert memory.reacted_to()["shop"] == 2  # and each slice's own key from now on
        assert max(v for k, v in memory.reacted_to().items() if k.startswith("shop#")) == 3
    finally:
        depot.close()
        memory.close()
