"""Sending order confirmations with a worker pool.

The mail gateway is stood in for by an outbox table; sending is idempotent because the
outbox is keyed by order, so a job redelivered after a worker died is not sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from uuid import UUID

import msgspec
from nats.aio.client import Client

from toolkit import (
    IntegrationEvent,
    StreamMessage,
    Translator,
    UnknownEvent,
    WorkQueue,
    WorkStats,
    contract,
)
from toolkit.nats.connection import Connection
from toolkit.readmodels.sqlite import connect

sales = Translator("sales")


@contract("sales.OrderPlaced", version=1)
class OrderPlaced(IntegrationEvent, frozen=True, kw_only=True):
    order_id: UUID
    customer_id: UUID


class Confirmation(msgspec.Struct, frozen=True):
    """Notifications' own language: a confirmation owed to a customer."""

    order_id: str
    customer_id: str


@sales.on(OrderPlaced)
def confirm(e: OrderPlaced) -> Confirmation:
    return Confirmation(str(e.order_id), str(e.customer_id))


class Confirmations:
    """The queue of confirmations to send, and the outbox they are sent to."""

    def __init__(
        self, client: Client | Connection, outbox: Path, *, ack_wait: float = 30.0
    ) -> None:
        self.queue = WorkQueue(
            client,
            "sales",
            "confirmations",
            subjects=["sales.order.*.OrderPlaced"],
            ack_wait=ack_wait,
        )
        self.outbox = outbox
        db = connect(outbox)
        db.execute(
            "CREATE TABLE IF NOT EXISTS sent (order_id TEXT PRIMARY KEY,"
            " customer_id TEXT NOT NULL, worker TEXT NOT NULL)"
        )
        db.close()

    async def worker(self, name: str, stop: asyncio.Event) -> WorkStats:
        """One worker of the pool; run as many as the load needs, in any processes."""
        db = connect(self.outbox)

        async def send(message: StreamMessage) -> None:
            try:
                facts = sales.translate(message)
            except UnknownEvent:
                return
            for fact in facts:
                assert isinstance(fact, Confirmation)
                db.execute(
                    "INSERT OR IGNORE INTO sent VALUES (?, ?, ?)",
                    (fact.order_id, fact.customer_id, name),
                )

        await self.queue.ensure()
        try:
            return await self.queue.work(send, stop)
        finally:
            db.close()

    def sent(self) -> list[tuple[str, str, str]]:
        with contextlib.closing(sqlite3.connect(self.outbox)) as db:
            return db.execute("SELECT order_id, customer_id, worker FROM sent").fetchall()


def confirmations(nats: Client | Connection, data_dir: Path) -> Confirmations:
    """The queue as ``toolkit work notifications`` runs it (see ``contexts/system.py``):
    its outbox is ``notifications/outbox.sqlite`` in the data folder."""
    folder = Path(data_dir) / "notifications"
    folder.mkdir(parents=True, exist_ok=True)
    return Confirmations(nats, folder / "outbox.sqlite")
