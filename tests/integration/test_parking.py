"""Parking keeps each aggregate's order, and a replay parks exactly what the live model
parked: the failing message and the later messages of its aggregate, never earlier ones;
a message the consumer cannot read yet (a newer contract version) parks the same way
(issue 16, cases 7 and 8)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from nats.aio.client import Client

from projections.shipping import Shipments, translation
from projections.shipping.translation import ShipmentCalledOff
from tests.envelopes import relayed
from tests.flow import home_of, project_all
from toolkit import StreamSpec, contract, ensure_stream
from toolkit.read.deadletters import retry_dead_letters
from toolkit.read.store import ReadModelStore
from toolkit.read.translator import Translator
from toolkit.readmodels import Connection
from toolkit.readmodels.sqlite import SQLiteHome
from toolkit.readmodels.tables import dead_letters as read_dead_letters
from toolkit.readmodels.tables import dump

A, B = str(uuid.UUID(int=0xA)), str(uuid.UUID(int=0xB))
CUSTOMER = str(uuid.UUID(int=0xC))


def placed(order: str) -> dict[str, object]:
    return {
        "order_id": order,
        "customer_id": CUSTOMER,
        "lines": [{"sku": "tea", "quantity": 1}],
        "placed_at": "2026-11-24T06:43:30Z",
    }


class FailsToCallOffA(Shipments):
    """Cannot record order A's cancellation, however often it tries."""

    retries = 1
    retry_delay = 0.01

    def apply_many(self, facts: list[object], db: Connection) -> None:
        for fact in facts:
            if isinstance(fact, ShipmentCalledOff) and str(fact.shipment_id) == A:
                raise RuntimeError("cannot call off A")
        super().apply_many(facts, db)


async def publish(nc: Client, events: list[tuple[str, str, dict[str, object], int]]) -> None:
    """The relay's messages for (aggregate, type, data, schema version), positions 1..n."""
    await ensure_stream(nc.jetstream(), StreamSpec("sales"))
    versions: dict[str, int] = {}
    for position, (aggregate, type_, data, schemaversion) in enumerate(events, 1):
        versions[aggregate] = versions.get(aggregate, 0) + 1
        subject, body, headers = relayed(
            "sales",
            position,
            type_,
            data,
            aggregate_id=aggregate,
            aggregate_version=versions[aggregate],
            schemaversion=schemaversion,
        )
        await nc.jetstream().publish(subject, body, headers=headers)


def model(folder: Path) -> tuple[dict[str, list[tuple[object, ...]]], list[tuple[int, str]]]:
    with SQLiteHome(folder, "shipping").reader() as db:
        assert db is not None
        letters = [(letter.sequence, letter.reason) for letter in read_dead_letters(db)]
        return dump(db), letters


@pytest.mark.parametrize("live_batch", [1, 2])
async def test_a_failing_message_parks_later_messages_of_its_aggregate_never_earlier(
    nc: Client, tmp_path: Path, live_batch: int
) -> None:
    """Case 7: a failing message parked the earlier messages of its aggregate that shared
    its batch. Live (small batches) and a replay (one batch) must agree."""
    await publish(
        nc,
        [
            (A, "sales.OrderPlaced", placed(A), 1),
            (B, "sales.OrderPlaced", placed(B), 1),
            (A, "sales.OrderCancelled", {"order_id": A, "reason": "r"}, 1),  # fails
            (A, "sales.OrderCancelled", {"order_id": A, "reason": "again"}, 1),  # behind it
            (B, "sales.OrderCancelled", {"order_id": B, "reason": "r"}, 1),
        ],
    )
    live, replay = tmp_path / "live", tmp_path / "replay"
    await project_all(FailsToCallOffA(), live, nc, batch_size=live_batch)
    await project_all(FailsToCallOffA(), replay, nc, batch_size=100)
    rows, letters = model(replay)
    assert model(live) == (rows, letters)
    assert {(r[0], r[2]) for r in rows["shipment"]} == {(A, "awaiting_dispatch"), (B, "called_off")}
    assert [sequence for sequence, _ in letters] == [3, 4]
    assert "parked behind sales sequence 3" in letters[1][1]


async def test_a_newer_contract_version_parks_its_aggregate_until_retried(
    nc: Client, data_dir: Path
) -> None:
    """Case 8: a message of a contract version the consumer cannot read yet was
    dead-lettered but the later events of its aggregate were applied, so retrying it
    after a deploy applied it out of order."""
    await publish(
        nc,
        [
            (A, "sales.OrderPlaced", placed(A), 2),  # newer than shipping reads
            (A, "sales.OrderCancelled", {"order_id": A, "reason": "r"}, 1),
            (B, "sales.OrderPlaced", placed(B), 1),
        ],
    )
    stats = await project_all(Shipments(), data_dir, nc)
    assert (stats.applied, stats.dead_lettered) == (1, 2)
    rows, letters = model(data_dir)
    assert [r[0] for r in rows["shipment"]] == [B]  # A's cancellation waits behind v2
    assert [sequence for sequence, _ in letters] == [1, 2]
    assert "v2 is newer than this consumer reads" in letters[0][1]
    assert "parked behind sales sequence 1" in letters[1][1]

    # A release of shipping that reads v2 is deployed: the retry applies A in its order.
    with home_of(data_dir, "shipping") as home:
        store = ReadModelStore(home.live(), Shipments())
        try:
            done, failed = retry_dead_letters(store, [reads_v2])
        finally:
            store.close()
    assert (done, failed) == (2, [])
    rows, letters = model(data_dir)
    assert {(r[0], r[2]) for r in rows["shipment"]} == {(A, "called_off"), (B, "awaiting_dispatch")}
    assert letters == []


@contract("sales.OrderPlaced", version=2)
class OrderPlacedV2(translation.OrderPlaced, frozen=True, kw_only=True):
    gift: bool = False


reads_v2 = Translator("sales")
"""Shipping's translator as a later release has it, reading OrderPlaced v2 too."""
reads_v2.on(translation.OrderCancelled)(translation.order_cancelled)
reads_v2.on(OrderPlacedV2)(translation.order_placed)
