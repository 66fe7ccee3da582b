"""What caused an event travels with it: the events a reaction stores carry the foreign
message's id as their causation and its chain's correlation id, in the log and on the
stream (read back from the log, or handed over by the save), and nothing else sees it:
aggregates reconstruct as before, and events saved outside a reaction carry no ids.

The contexts are test_policies' (shop publishes orders, depot packs and counts them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from eventsourcing.persistence import Tracking

from tests.integration.test_policies import Depot, Parcel, Parcels, depot_env, placed
from toolkit import wire
from toolkit.react import PolicyRunner
from toolkit.testing import published_events
from toolkit.write.causation import KEY, Causation
from toolkit.write.outbox import Outbox

__all__ = ["depot_env"]  # the fixture: a SQLite, PostgreSQL or JetStream log for depot

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def depot(depot_env: dict[str, str], tmp_path: Path) -> Iterator[Depot]:
    context = Depot(env=dict(depot_env), data_dir=tmp_path)
    yield context
    context.close()


def ids(depot: Depot) -> list[tuple[str, str | None, str | None]]:
    return [
        (e.envelope.data["order_id"], e.envelope.causationid, e.envelope.correlationid)
        for e in published_events(depot)
    ]


def test_a_reaction_s_events_carry_its_cause_on_every_log(depot: Depot) -> None:
    depot.pack("o1", "tea")  # a command from outside: no cause
    with depot.processing(Tracking("parcels:shop", 1), caused_by=Causation.of("shop:7", None)):
        depot.pack("o2", "tea")
    with depot.processing(
        Tracking("parcels:shop", 2), caused_by=Causation.of("shop:8", "web:order-form")
    ):
        depot.pack("o3", "jam")
    assert ids(depot) == [
        ("o1", None, None),
        ("o2", "shop:7", "shop:7"),  # the first of its chain
        ("o3", "shop:8", "web:order-form"),
    ]
    parcel: Parcel = depot.repository.get(Parcel.create_id("o2"))  # aggregates never see it
    assert (parcel.order_id, parcel.item) == ("o2", "tea") and KEY not in vars(parcel)
    (notification,) = depot.recorder.select_notifications(start=2, limit=1)
    assert KEY not in vars(depot.mapper.to_domain_event(notification))


def test_a_save_handed_over_to_the_relay_carries_it_too(tmp_path: Path) -> None:
    depot = Depot(data_dir=tmp_path)
    outbox = Outbox(depot)
    try:
        with outbox.handing_over():
            with depot.processing(Tracking("parcels:shop", 1), caused_by=Causation("shop:9", "c")):
                depot.pack("o9", "tea")
            page = outbox.read(0, 1, 100)
        assert outbox.pages_handed_over == 1
        (message,) = page.messages
        assert b'"correlationid":"c","causationid":"shop:9"' in message.body
    finally:
        depot.close()


def test_a_policy_s_effects_name_the_message_it_reacted_to(depot: Depot) -> None:
    second = placed(2, "jam")  # one of a chain a web form started
    envelope = msgspec.json.decode(second.data, type=wire.Envelope)
    envelope.correlationid = "web:form-1"
    second = dataclasses.replace(second, data=wire.encode_envelope(envelope))
    PolicyRunner(Parcels(), depot).apply([placed(1, "tea"), second])
    packed = [e for e in published_events(depot) if e.type == "depot.ParcelPacked"]
    assert [(e.envelope.causationid, e.envelope.correlationid) for e in packed] == [
        ("shop:1", "shop:1"),
        ("shop:2", "web:form-1"),
    ]
