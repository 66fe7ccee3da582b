"""Helpers that drive the example system through a real server, for several tests."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import nats.errors
import orjson
from nats.aio.client import Client

from contexts.sales import Sales
from toolkit import Relay, Settings
from toolkit.read.projection import Projection
from toolkit.read.projector import Projector, ProjectorStats
from toolkit.read.reader import StreamMessage, StreamReader
from toolkit.read.store import ReadModelStore
from toolkit.readmodels import ReadModelHome
from toolkit.readmodels.backends import open_home
from toolkit.readmodels.sqlite import SQLiteHome
from toolkit.readmodels.tables import dump

Where = Path | Settings
"""Where read models live: a data folder (SQLite files) or settings (either backend)."""


def cli_args(settings: Settings) -> list[str]:
    """The CLI's options for the data folder and the read models of ``settings``."""
    url = settings.read_model_url
    return ["--data-dir", str(settings.data_dir), *(["--read-model-url", url] if url else [])]


@contextlib.contextmanager
def home_of(where: Where, name: str) -> Iterator[ReadModelHome]:
    """The home of projection ``name``, closed afterwards."""
    home = open_home(where if isinstance(where, Settings) else Settings(data_dir=where), name)
    try:
        yield home
    finally:
        home.close()


async def relay_all(sales: Sales, nc: Client) -> int:
    stats = await Relay(sales, nc).run(until_head=True)
    return stats.stream_sequence


async def relay_orders(data_dir: Path, nc: Client, orders: int) -> int:
    """A sales log in ``data_dir`` with ``orders`` orders (those of ``fill_log``), relayed
    onto the stream; returns the stream's head."""
    from benchmarks.relay import fill_log

    sales = Sales(data_dir=data_dir)
    try:
        fill_log(sales, orders)
        return await relay_all(sales, nc)
    finally:
        sales.close()


async def project_all(
    projection: Projection, where: Where, nc: Client, *, batch_size: int = 1000
) -> ProjectorStats:
    with home_of(where, projection.name) as home, home.writer_lock():
        store = ReadModelStore(home.live(), projection)
        try:
            return await Projector(projection, store, nc, batch_size=batch_size).run(
                until_head=True
            )
        finally:
            store.close()


async def read_all(nc: Client, stream: str = "sales", *, within: float = 30) -> list[StreamMessage]:
    """Every message of ``stream``. A cluster that has just lost and regained a server may
    not answer the consumer's creation in time (its JetStream leaders are still being
    chosen); that is asked again, as any reader does, for ``within`` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            return await _read_all(nc, stream)
        except nats.errors.TimeoutError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)  # the cluster signals nothing when its leaders are chosen


async def _read_all(nc: Client, stream: str) -> list[StreamMessage]:
    info = await nc.jetstream().stream_info(stream)
    messages: list[StreamMessage] = []
    async with StreamReader(nc, stream, batch_size=100) as reader:
        while len(messages) < info.state.messages:
            messages += await reader.next_batch(max_wait=2)
    return messages


TEAS = {"sku": "tea", "quantity": 2, "unit_price": "1.25"}
MUGS = {"sku": "mug-blue", "quantity": 2, "unit_price": "4.50"}


def place_orders(
    sales: Sales,
    count: int,
    *,
    cancel_every: int | None = None,
    note_every: int | None = None,
    line: dict[str, object] = TEAS,
) -> tuple[UUID, list[UUID]]:
    """One customer and ``count`` orders of ``line``; the first order and every
    ``cancel_every``-th after it are cancelled, the first and every ``note_every``-th
    get a private note (an event the relay keeps in the context). Returns the customer
    and the orders."""
    customer = sales.register_customer("Ann", "ann@example.com")
    orders: list[UUID] = []
    for i in range(count):
        order = sales.place_order(customer, [line])
        if note_every and i % note_every == 0:
            sales.add_order_note(order, "private")
        if cancel_every and i % cancel_every == 0:
            sales.cancel_order(order, "changed her mind")
        orders.append(order)
    return customer, orders


def sales_log(data_dir: Path, orders: int) -> None:
    """A sales log in ``data_dir``, written by a context closed again: one customer and
    ``orders`` orders (4 events for 3 orders)."""
    sales = Sales(data_dir=data_dir)
    try:
        place_orders(sales, orders)
    finally:
        sales.close()


def public_positions(sales: Sales) -> list[int]:
    """Log positions of every event the published language maps, in log order."""
    positions: list[int] = []
    start = 0
    while batch := sales.recorder.select_notifications(
        start=start, limit=5000, inclusive_of_start=False
    ):
        language = sales.published_language
        positions += [n.id for n in batch if language.mapping(n.topic) is not None]
        start = batch[-1].id
    return positions


async def assert_stream_is_the_log(nc: Client, sales: Sales) -> None:
    """Sequence by sequence: stream message n carries the n-th public event of the log,
    its de-duplication id naming that position: ``sales:P``, or ``sales@EPOCH:P`` for an
    event a relay published again after the stream lost it (a cluster's leader killed
    with a replica behind: toolkit.wire.envelope.message_id)."""
    messages = await read_all(nc)
    expected = public_positions(sales)
    assert [m.sequence for m in messages] == list(range(1, len(messages) + 1))
    positions = [orjson.loads(m.data)["logposition"] for m in messages]
    assert positions == expected
    ids = [m.headers["Nats-Msg-Id"] for m in messages]
    epochs = [i.partition(":")[0] for i in ids]
    assert [i.partition(":")[2] for i in ids] == [str(p) for p in expected]
    assert all(e == "sales" or re.fullmatch(r"sales@[0-9]+", e) for e in epochs), set(epochs)


async def assert_equal_to_a_clean_build(
    data_dir: Path, projection: Projection, nc: Client, clean_dir: Path
) -> dict[str, list[tuple[object, ...]]]:
    """The projection's read model in ``data_dir`` equals, row by row, one built anew from
    the stream in ``clean_dir``; returns its rows and checkpoints."""
    await project_all(projection, clean_dir, nc)
    with (
        SQLiteHome(data_dir, projection.name).reader() as faulted,
        SQLiteHome(clean_dir, projection.name).reader() as reference,
    ):
        assert faulted is not None and reference is not None
        rows = dump(faulted)
        assert rows == dump(reference)
        rows["toolkit_checkpoint"] = faulted.execute("SELECT * FROM toolkit_checkpoint").fetchall()
        return rows
