from __future__ import annotations

from nats.aio.client import Client

from toolkit import StreamSpec, ensure_stream


async def test_provisioning_is_idempotent_and_applies_changes(nc: Client) -> None:
    js = nc.jetstream()
    first = await ensure_stream(js, StreamSpec("sales"))
    assert first.config.subjects == ["sales.>"]
    assert first.config.duplicate_window == 3600
    again = await ensure_stream(js, StreamSpec("sales"))
    assert again.config == first.config
    await js.publish("sales.order.1.OrderPlaced", b"{}")
    changed = await ensure_stream(js, StreamSpec("sales", duplicate_window=7200))
    assert changed.config.duplicate_window == 7200
    assert changed.state.messages == 1  # updating kept the stream's messages
