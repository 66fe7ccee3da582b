"""Whatever lands on a stream, the consumer keeps going: junk ends as a dead letter with
its reason, events it does not read are skipped, and the rest is applied."""

from __future__ import annotations

from pathlib import Path

from nats.aio.client import Client

from projections.shipping import Shipments
from tests.envelopes import relayed
from tests.flow import project_all
from toolkit import StreamSpec, ensure_stream
from toolkit.readmodels.sqlite import SQLiteHome


async def publish(
    nc: Client, body: bytes, headers: dict[str, str] | None = None, subject: str = "sales.order.x.E"
) -> None:
    await nc.jetstream().publish(subject, body, headers=headers)


def placed(order_id: str, position: int) -> tuple[bytes, dict[str, str], str]:
    """The relay's OrderPlaced for ``order_id`` at log position ``position``."""
    data = {
        "order_id": order_id,
        "customer_id": "6a2f41a0-6f5b-4b4b-9b1a-2b6f3f1a0c11",
        "lines": [{"sku": "tea", "quantity": 1}],
        "placed_at": "2026-11-24T06:43:30Z",
    }
    subject, body, headers = relayed(
        "sales", position, "sales.OrderPlaced", data, aggregate_id=order_id
    )
    return body, headers, subject


async def test_junk_on_the_stream_is_dead_lettered_and_the_rest_applied(
    nc: Client, data_dir: Path
) -> None:
    await ensure_stream(nc.jetstream(), StreamSpec("sales"))
    first, last = "5f0c7f3e-9c1e-4a59-8f0e-2b6f3f1a0c11", "7e0c7f3e-9c1e-4a59-8f0e-2b6f3f1a0c11"
    body, headers, subject = placed(first, 1)
    await publish(nc, body, headers, subject)
    await publish(nc, b"")  # empty
    await publish(nc, b"\xff\xfe not utf-8")
    await publish(nc, b'{"type": 7, "schemaversion": "one", "data": 1}')  # wrong types
    await publish(nc, b"[1, 2, 3]")
    await publish(nc, *placed("not-a-uuid", 2))  # the relay's, but breaks its contract
    await publish(nc, body, headers={"Status": "503", "Description": "lies"})
    body, headers, subject = placed(last, 3)
    await publish(nc, body, {**headers, "X-Junk": "é" * 100}, subject)
    stats = await project_all(Shipments(), data_dir, nc)
    assert stats.checkpoints["sales"] == 8
    assert (stats.dead_lettered, stats.untrusted, stats.applied) == (6, 5, 2)
    with SQLiteHome(data_dir, "shipping").reader() as db:
        assert db is not None
        assert {r[0] for r in db.execute("SELECT shipment_id FROM shipment")} == {first, last}
        reasons = dict(db.execute("SELECT sequence, reason FROM toolkit_dead_letter"))
    assert set(reasons) == {2, 3, 4, 5, 6, 7}
    assert all(reason for reason in reasons.values())
    assert "not published by the sales relay: it has no Nats-Msg-Id" in reasons[7]
