"""The whole pipeline as a state machine (issue 16, "Done when"): hypothesis drives the
sales context, its relay, three projections and an operator through random sequences of
commands and faults on a real nats-server, with real ``toolkit`` processes, and after
every step checks the toolkit's promises:

- the stream holds each public event of the log once, in log order (only the relay's
  own messages count: :func:`toolkit.nats.streams.relayed`; forgeries the test published are
  known by their sequences);
- every read model readers use equals a clean build from the stream (up to its
  checkpoint, from where a partial model starts, with the same deploy of the failing
  projection), and its dead letters are what the stream explains;
- ``toolkit status`` (:func:`toolkit.ops.status.collect`, and the CLI in a rule of its own)
  tells the truth: relay lag, projection states, checkpoints, lag, dead letters, partial
  models and the generations kept beside.

Steps: commands on customers and orders (UUIDs) and on products (text SKUs from a wide
alphabet, up to :data:`toolkit.wire.MAX_ID_TOKEN` once encoded, and refused ones); the
relay and the projectors started and stopped as ``python -m toolkit`` processes (SIGTERM,
or SIGKILL at any point, also in the middle of a burst) or as tasks in this process
(stopped, or cancelled at an await); another client publishing anything on ``sales.>``
(any bytes and headers, ids in the relay's form that disagree with their envelope,
and messages in the relay's form exactly that disagree with the log, which stop the
relay until the operator removes them); the catalogue projection failing for some SKUs
until its fix is deployed and its dead letters retried (``toolkit dlq retry`` or the
store's retry); replays (whole, from a sequence with and without ``--switch-partial``,
killed and run again) and rewinds; billing's slice workers coming and going (a second
joins, one of two leaves); the stream losing its tail.

Every step is followed by a few commands, so traffic goes on while things break. Each bug
it found has a test of its own in tests/faults/test_pipeline_regressions.py.

In the suite it runs 6 examples of up to 15 steps from a fixed seed, the same every run
(about 35 s on two cores). The nightly run explores: ``TOOLKIT_NIGHTLY=1`` draws random
examples, 100 of up to 60 steps (``TOOLKIT_PIPELINE_EXAMPLES`` and
``TOOLKIT_PIPELINE_STEPS`` override either), with a timeout of 6 hours; a failure
prints a ``@reproduce_failure`` blob, which ``TOOLKIT_PIPELINE_REPRODUCE="<version>
<blob>"`` runs again (``TOOLKIT_PIPELINE_VERBOSE=1`` prints each step as it runs,
``TOOLKIT_PIPELINE_SHRINK=0`` reports a failure without shrinking it, which takes
minutes with real processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar, cast
from uuid import UUID

import orjson
import pytest
from hypothesis import HealthCheck, Phase, Verbosity, reproduce_failure, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from contexts.sales import Sales
from projections.billing import Accounts
from projections.shipping import Shipments
from tests.catalogue import FAILS, Catalogue
from tests.catalogue import system as pipeline_system
from tests.envelopes import relayed as relay_message
from tests.flow import public_positions, read_all
from tests.integration.test_text_ids import ALPHABET
from toolkit import Relay, wire
from toolkit.config import Settings
from toolkit.errors import (
    ConflictError,
    InvalidCommand,
    ProjectionError,
    RelayError,
    SubjectError,
)
from toolkit.nats.connection import Connection, connect
from toolkit.nats.embedded import EmbeddedServer
from toolkit.nats.streams import Relayed, last_message, relayed
from toolkit.ops.status import collect
from toolkit.read.deadletters import retry_dead_letters
from toolkit.read.projection import Projection, StartPosition
from toolkit.read.projector import Projector
from toolkit.read.reader import StreamMessage
from toolkit.read.replay import partial_from, rebuild, rewind
from toolkit.read.slices import SlicedStore, SliceWorker, lease_group
from toolkit.read.store import ReadModelStore
from toolkit.readmodels.interface import SLICE_WORKERS
from toolkit.readmodels.sqlite import SQLiteHome
from toolkit.readmodels.sqlite import connect as open_generation
from toolkit.readmodels.tables import DeadLetter, dump
from toolkit.readmodels.tables import dead_letters as read_dead_letters

T = TypeVar("T")

NIGHTLY = os.environ.get("TOOLKIT_NIGHTLY") == "1"
EXAMPLES = int(os.environ.get("TOOLKIT_PIPELINE_EXAMPLES") or (100 if NIGHTLY else 6))
STEPS = int(os.environ.get("TOOLKIT_PIPELINE_STEPS") or (60 if NIGHTLY else 15))
TIMEOUT = 6 * 3600 if NIGHTLY else 110
SEED = int(os.environ.get("TOOLKIT_PIPELINE_SEED") or 16)
"""The suite's examples are always the same ones (the nightly run's are random)."""

VERBOSE = bool(os.environ.get("TOOLKIT_PIPELINE_VERBOSE"))
"""Print each step as it runs (hypothesis prints them only for a failing example)."""
REPRODUCE = os.environ.get("TOOLKIT_PIPELINE_REPRODUCE")
"""``<version> <blob>`` from a failure's ``@reproduce_failure``: run that example again."""
SHRINK = os.environ.get("TOOLKIT_PIPELINE_SHRINK") != "0"
"""Shrink a failing example (minutes with real processes; ``0`` reports it as found)."""

ROOT = Path(__file__).resolve().parents[2]
SYSTEM = "tests.catalogue:system"
PROJECTIONS = ("shipping", "billing", "catalogue")
MARK = "✗"
"""The catalogue's handler fails for SKUs holding this until its fix is deployed."""
WITHIN = 20.0
"""Seconds anything that should happen is given (a relay catching up, a worker starting)."""


def step(**arguments: st.SearchStrategy[Any]) -> Callable[[Callable[..., None]], Any]:
    """A rule of :class:`Pipeline` drawing ``arguments``, after which a few commands run:
    traffic goes on while things break (printed as it runs with VERBOSE)."""

    def decorate(body: Callable[..., None]) -> Any:
        def run(self: Pipeline, then: list[tuple[Any, ...]], **drawn: Any) -> None:
            if VERBOSE:
                shown = ", ".join(f"{k}={v!r:.80}" for k, v in drawn.items())
                print(f"{body.__name__}({shown}), then {len(then)} commands")
            body(self, **drawn)
            self._commands(then)

        run.__name__, run.__qualname__, run.__doc__ = body.__name__, body.__qualname__, body.__doc__
        # (rule's overloads take no **dict: its keys could be target or targets)
        make = cast(Callable[..., Callable[[Callable[..., None]], Any]], rule)
        return make(**arguments, then=st.lists(commands, max_size=3))(run)

    return decorate


# -- ids --------------------------------------------------------------------------------


def fit(sku: str) -> str:
    """``sku`` cut until its subject token is within the limit."""
    while sku:
        try:
            wire.encode_token(sku)
            return sku
        except SubjectError:
            sku = sku[: len(sku) * 3 // 4] if len(sku) > 400 else sku[:-1]
    return sku


def at_limit(sku: str) -> str:
    """``sku`` padded with letters to exactly the limit once encoded."""
    sku = fit(sku)
    return sku + "a" * (wire.MAX_ID_TOKEN - len(wire.encode_token(sku)))


characters = st.sampled_from(ALPHABET) | st.characters(codec="utf-8", exclude_characters="\0")
texts = st.text(characters, min_size=1, max_size=60)
skus = st.one_of(
    st.sampled_from([".", "*", ">", "%", " ", "%2E", "a.*.>", " tea ", "绿茶.500g", "sales.>"]),
    texts.map(fit).filter(bool),
    texts.map(at_limit),
    st.text(st.sampled_from("中文字绿茶日本語"), min_size=100, max_size=113),  # 9 bytes short
)
refused_skus = st.one_of(
    st.just(""),
    st.builds(lambda s: s + "\0", texts),
    texts.map(lambda s: at_limit(s) + "a"),  # one over
    st.text(st.sampled_from("中文字绿茶日本語"), min_size=342, max_size=400),
)
names = st.text(characters, min_size=1, max_size=12).filter(lambda s: bool(s.strip()))
prices = st.decimals(min_value=0, max_value=9999, places=2, allow_nan=False)
indexes = st.integers(min_value=0, max_value=10_000)
commands = st.one_of(
    st.tuples(st.just("register_customer"), names),
    st.tuples(
        st.just("place_order"),
        indexes,
        st.lists(
            st.tuples(skus.filter(str.strip), st.integers(1, 30), prices), min_size=1, max_size=3
        ),
    ),
    st.tuples(st.just("cancel_order"), indexes, st.booleans()),
    st.tuples(st.just("list_product"), skus, names, prices, st.booleans()),
    st.tuples(st.just("list_refused_product"), refused_skus),
    st.tuples(st.just("reprice_product"), indexes, prices),
)
"""Commands on customers and orders (UUIDs) and products (text SKUs), by the method
of :class:`Pipeline` that runs each and its arguments."""


# -- what another client publishes --------------------------------------------------------

positions = st.one_of(
    st.integers(1, 60),
    st.integers(wire.MAX_LOG_POSITION - 3, wire.MAX_LOG_POSITION + 3),
    st.integers(-3, 0),
)
relay_form_ids = st.builds(
    lambda p, e: wire.message_id("sales", p, e) if p > 0 else f"sales:{p}",
    positions,
    st.sampled_from([0, 0, 1, 2**63]),
)
any_ids = relay_form_ids | st.sampled_from(
    ["billing:3", "sales", "sales:", "sales:\u00b2", "x:sales:3", "SALES:3", "sales:03", " sales:3"]
)
header_values = st.text(
    st.characters(codec="utf-8", exclude_characters="\r\n\0"), min_size=1, max_size=20
).filter(lambda v: v.strip() == v)
headers = st.dictionaries(
    st.sampled_from(
        ["Nats-Msg-Id", "X-Trace", "ce-id", "ce-source", "Nats-Expected-Last-Sequence", "Nats-TTL"]
    ),
    header_values,
    max_size=3,
)
subjects = st.sampled_from(
    [
        "sales.order.x.OrderCancelled",
        "sales.product.tea.ProductRepriced",
        "sales.anything",
        "sales.a.b.c.d.e",
        "sales.customer.00000000-0000-0000-0000-000000000000.CustomerRegistered",
    ]
)
bodies = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"{}", b"null", b"[]", b'{"specversion":"1.0"}', b"\xff\xfe"]),
)


@dataclass(frozen=True)
class Forgery:
    """A message in the relay's form exactly (its id and envelope agree) about an
    aggregate the log does not hold at that position, or a copy of one of the relay's
    messages under another id."""

    position: int
    epoch: int
    kind: str
    sku_index: int


forgeries = st.builds(
    Forgery,
    st.one_of(st.integers(1, 60), st.just(wire.MAX_LOG_POSITION)),
    st.sampled_from([0, 7]),
    st.sampled_from(["repriced", "cancelled", "unreadable", "copy"]),
    indexes,
)
tampering = st.sampled_from(["source", "id", "logposition", "header", "no header"])


# -- processes and in-process workers ---------------------------------------------------


class Process:
    """A ``python -m toolkit`` process on the test's data folder and server."""

    counter = itertools.count()

    def __init__(self, folder: Path, url: str, env: dict[str, str], *args: str) -> None:
        number = next(self.counter)
        self.args = args
        self.out = folder / f"process-{number}.out"
        self.err = folder / f"process-{number}.err"
        data = folder / "data"
        command = [sys.executable, "-m", "toolkit", "--data-dir", str(data), "--nats-url", url]
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.popen = subprocess.Popen(
                [*command, "--system", SYSTEM, *args],
                stdout=out,
                stderr=err,
                env={**os.environ, **env},
                cwd=ROOT,
            )

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def describe(self) -> str:
        return f"toolkit {' '.join(self.args)} (exit {self.popen.poll()}): {self.stderr()!r}"

    async def said(self, text: str) -> None:
        """Wait until the process has written ``text`` on stderr (it is ready)."""
        for _ in range(int(WITHIN / 0.02)):
            if text in self.stderr():
                return
            if self.popen.poll() is not None:
                raise AssertionError(f"exited before saying {text!r}: {self.describe()}")
            await asyncio.sleep(0.02)
        raise AssertionError(f"did not say {text!r} within {WITHIN}s: {self.describe()}")

    async def finished(self, within: float = WITHIN) -> int:
        for _ in range(int(within / 0.02)):
            code = self.popen.poll()
            if code is not None:
                return code
            await asyncio.sleep(0.02)
        raise AssertionError(f"still running after {within}s: {self.describe()}")

    async def stop(self, how: str) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL if how == "kill" else signal.SIGTERM)
        return await self.finished()


@dataclass
class Worker:
    """A projector (of the whole, or one of a sliced projection's workers): a process or a
    task of this process."""

    process: Process | None = None
    task: asyncio.Task[Any] | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    held: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def ended(self) -> bool:
        if self.process is not None:
            return self.process.popen.poll() is not None
        assert self.task is not None
        return self.task.done()

    def describe(self) -> str:
        if self.process is not None:
            return self.process.describe()
        assert self.task is not None
        return f"task {self.task!r}"


def as_raw(message: StreamMessage) -> Any:
    """A stream message as :func:`toolkit.nats.streams.relayed` takes it."""
    return SimpleNamespace(headers=message.headers, data=message.data, seq=message.sequence)


def message(raw: Any) -> StreamMessage:
    """A message as :func:`toolkit.nats.streams.last_message` gives it, as a reader would."""
    headers = {k: str(v) for k, v in (raw.headers or {}).items()}
    return StreamMessage("sales", int(raw.seq or 0), raw.subject or "", headers, raw.data or b"")


def mine(message: StreamMessage) -> Relayed | None:
    found = relayed("sales", as_raw(message))
    return None if isinstance(found, str) else found


@dataclass
class Snapshot:
    """What readers of a projection see, read in one transaction."""

    generation: str
    checkpoints: dict[str, int]
    rows: dict[str, list[tuple[Any, ...]]]
    dead: list[DeadLetter]
    meta: dict[str, str]
    partial: dict[str, int]
    positions: dict[str, int]
    """The log position of the last relay message passed, per checkpoint."""


# -- the machine --------------------------------------------------------------------------


class Pipeline(RuleBasedStateMachine):
    """One example: a data folder of its own, an empty ``sales`` stream."""

    url: str
    root: Path
    examples = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        self.folder = self.root / f"example-{next(self.examples)}"
        self.data = self.folder / "data"
        self.data.mkdir(parents=True)
        self.loop = asyncio.new_event_loop()
        self.nc: Client = self.run(connect(self.url, name="pipeline"))
        self.other: Client = self.run(connect(self.url, name="another-publisher"))
        with contextlib.suppress(NotFoundError):
            self.run(self.nc.jetstream().delete_stream("sales"))
        self.sales = Sales(data_dir=self.data)
        self.settings = Settings(nats_url=self.url, data_dir=self.data, system=SYSTEM)
        self.homes = {name: SQLiteHome(self.data, name) for name in PROJECTIONS}
        self.builds = itertools.count()
        # What the test knows.
        self.customers: list[UUID] = []
        self.orders: dict[UUID, bool] = {}  # -> cancelled
        self.products: dict[str, int] = {}  # sku -> repricings
        self.relay: Process | tuple[Relay, asyncio.Event, asyncio.Task[Any]] | None = None
        self.workers: dict[str, list[Worker]] = {name: [] for name in PROJECTIONS}
        self.partial: dict[str, int | None] = dict.fromkeys(PROJECTIONS)
        """Where the model readers use starts, when it is partial."""
        self.beside: dict[str, dict[str, int | None]] = {name: {} for name in PROJECTIONS}
        """Generations kept beside the one readers use: name -> where it starts."""
        self.fixed = False
        """Whether the catalogue's fix is deployed."""
        self.untrusted: set[int] = set()
        """Sequences of others' messages that are not in the relay's form."""
        self.forged: set[int] = set()
        """Sequences of others' messages in the relay's form, on the stream now."""
        self.was_forged: set[int] = set()
        self.forged_ids: set[str] = set()
        self.lost_from: int | None = None
        """The first sequence of the relay's messages the stream lost, until the relay has
        carried their events again."""
        """The envelope ids of every forgery published (``sales:<position>``)."""

    @initialize(
        relay=st.sampled_from(["process", "task", "none"]),
        projectors=st.lists(st.sampled_from(["process", "task", "none"]), min_size=3, max_size=3),
    )
    def start(self, relay: str, projectors: list[str]) -> None:
        """Most examples start with everything running, as a deployment does."""
        if VERBOSE:
            print(f"start(relay={relay!r}, projectors={projectors!r})")
        if relay != "none":
            self._start_relay(process=relay == "process")
        for name, how in zip(PROJECTIONS, projectors, strict=True):
            if how != "none":
                self.start_workers(name, [how == "process"])

    # -- plumbing -----------------------------------------------------------------------

    def run(self, awaitable: Awaitable[T]) -> T:
        return self.loop.run_until_complete(awaitable)

    def env(self) -> dict[str, str]:
        # (A killed slice worker's slices move when its leases expire: 1 s keeps it brisk.)
        return {FAILS: "" if self.fixed else MARK, "TOOLKIT_LEASE_TTL": "1"}

    def projection(self, name: str) -> Projection:
        if name == "catalogue":
            return Catalogue("" if self.fixed else MARK)
        return Shipments() if name == "shipping" else Accounts()

    def teardown(self) -> None:
        try:
            for workers in self.workers.values():
                for worker in workers:
                    self.run(self._halt(worker, "kill"))
            self.run(self._stop_relay("kill"))
        finally:
            self.sales.close()
            for home in self.homes.values():
                home.close()
            self.run(self.nc.close())
            self.run(self.other.close())
            self.loop.close()
            shutil.rmtree(self.folder, ignore_errors=True)

    async def wait(
        self,
        what: str,
        condition: Callable[[], Awaitable[bool]],
        seen: Callable[[], Awaitable[str]],
    ) -> None:
        """Wait until ``condition()``; fail saying ``what`` and what was ``seen``."""
        for _ in range(int(WITHIN / 0.05)):
            if await condition():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{what}: not within {WITHIN}s; {await seen()}")

    # -- commands -----------------------------------------------------------------------

    @step(commands=st.lists(commands, min_size=1, max_size=8))
    def run_commands(self, commands: list[tuple[Any, ...]]) -> None:
        self._commands(commands)

    def _commands(self, commands: list[tuple[Any, ...]]) -> None:
        for kind, *arguments in commands:
            getattr(self, kind)(*arguments)

    def register_customer(self, name: str) -> None:
        self.customers.append(self.sales.register_customer(name, f"c{len(self.customers)}@x.org"))

    def place_order(self, customer: int, lines: list[tuple[str, int, Decimal]]) -> None:
        if not self.customers:
            self.register_customer("First")
        who = self.customers[customer % len(self.customers)]
        order = self.sales.place_order(
            who, [{"sku": s, "quantity": q, "unit_price": p} for s, q, p in lines]
        )
        self.orders[order] = False

    def cancel_order(self, order: int, note: bool) -> None:
        if not self.orders:
            return
        which = list(self.orders)[order % len(self.orders)]
        if note:  # a private event: it never leaves the context
            self.sales.add_order_note(which, "private")
            return
        if self.orders[which]:
            with pytest.raises(InvalidCommand, match="already cancelled"):
                self.sales.cancel_order(which, "again")
            return
        self.sales.cancel_order(which, "changed her mind")
        self.orders[which] = True

    def list_product(self, sku: str, name: str, price: Decimal, failing: bool) -> None:
        if failing and not self.fixed:
            sku = fit(MARK + sku)
        if sku in self.products:
            with pytest.raises(ConflictError):
                self.sales.list_product(sku, name, price)
            return
        assert self.sales.list_product(sku, name, price) == sku
        assert self.sales.get_product(sku).sku == sku
        self.products[sku] = 0

    def list_refused_product(self, sku: str) -> None:
        head = self.sales.recorder.max_notification_id()
        with pytest.raises(InvalidCommand):
            self.sales.list_product(sku, "refused", Decimal(1))
        assert self.sales.recorder.max_notification_id() == head  # nothing stored

    def reprice_product(self, product: int, price: Decimal) -> None:
        if not self.products:
            return
        sku = list(self.products)[product % len(self.products)]
        self.sales.reprice_product(sku, price)
        self.products[sku] += 1

    # -- the relay ----------------------------------------------------------------------

    @precondition(lambda self: self.relay is None)
    @step(process=st.booleans())
    def start_relay(self, process: bool) -> None:
        self._start_relay(process)

    def _start_relay(self, process: bool) -> None:
        if process:
            self.relay = Process(self.folder, self.url, self.env(), "relay", "sales")
            self.run(self.relay.said("relaying sales"))
        else:
            relay = Relay(self.sales, self.nc, retry_delay=0.05, max_retry_delay=0.5)
            stop = asyncio.Event()
            self.relay = (relay, stop, self.loop.create_task(relay.run(stop)))

    @precondition(lambda self: self.relay is not None)
    @step(how=st.sampled_from(["term", "kill"]))
    def stop_relay(self, how: str) -> None:
        self.run(self._stop_relay(how))

    async def _stop_relay(self, how: str) -> None:
        relay, self.relay = self.relay, None
        if isinstance(relay, Process):
            code = await relay.stop(how)
            if how == "term" and code != 0:
                self._relay_stopped_by_a_forgery(relay.stderr())
        elif relay is not None:
            _, stop, task = relay
            if how == "kill":
                task.cancel()
            else:
                stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await task
                except RelayError as exc:
                    self._relay_stopped_by_a_forgery(str(exc))

    def _relay_stopped_by_a_forgery(self, said: str) -> None:
        """The relay may stop only for a message in its form that the log disagrees
        with, saying which (one line)."""
        assert self.forged, f"the relay stopped: {said}"
        lines = said.strip().splitlines()
        assert lines and "Traceback" not in said, said
        assert any(re.search(rf"\bsequence {s}\b", lines[-1]) for s in self.forged), said
        assert any(f"nats stream rmm sales {s}" in lines[-1] for s in self.forged), said

    @precondition(lambda self: isinstance(self.relay, Process))
    @step(orders=st.integers(5, 40), after=st.floats(0, 0.3))
    def kill_the_relay_in_a_burst(self, orders: int, after: float) -> None:
        """SIGKILL the relay process somewhere in its work."""
        if not self.customers:
            self.register_customer("Burst")
        for _ in range(orders):
            order = self.sales.place_order(
                self.customers[-1], [{"sku": "tea", "quantity": 1, "unit_price": "1.00"}]
            )
            self.orders[order] = False
        self.run(asyncio.sleep(after))
        self.run(self._stop_relay("kill"))

    # -- projectors ---------------------------------------------------------------------

    def _start(self, name: str, process: bool) -> Worker:
        worker = Worker()
        projection = self.projection(name)
        if projection.slices is not None:
            self._start_slice_worker(worker, name, projection, process)
        elif process:
            worker.process = Process(self.folder, self.url, self.env(), "project", name)
            self.run(worker.process.said(f"projecting {name}"))
        else:
            home = worker.held.enter_context(contextlib.closing(SQLiteHome(self.data, name)))
            worker.held.enter_context(home.writer_lock())
            store = ReadModelStore(home.live(), projection)
            projector = Projector(projection, store, self.nc)
            worker.held.callback(store.close)
            worker.held.callback(lambda: projector.store.close())  # after following a replay
            worker.task = self.loop.create_task(projector.run(worker.stop, home=home))
        self.workers[name].append(worker)
        return worker

    def _start_slice_worker(
        self, worker: Worker, name: str, projection: Projection, process: bool
    ) -> None:
        """One more worker of a sliced projection (any number share its slices)."""
        if process:
            worker.process = Process(self.folder, self.url, self.env(), "project", name)
            self.run(worker.process.said(f"projecting {name}"))
            return
        assert projection.slices is not None
        home = worker.held.enter_context(contextlib.closing(SQLiteHome(self.data, name)))
        worker.held.enter_context(home.writer_lock(SLICE_WORKERS))  # as toolkit project
        store = SlicedStore(home.live(), projection, projection.slices)
        leases = lease_group(Connection.of(self.nc), projection, ttl=1.0)
        slice_worker = SliceWorker(projection, store, self.nc, leases)
        worker.held.callback(store.close)
        worker.held.callback(lambda: slice_worker.store.close())  # after following a replay
        worker.task = self.loop.create_task(slice_worker.run(worker.stop, home=home))

    async def _halt(self, worker: Worker, how: str) -> None:
        try:
            if worker.process is not None:
                code = await worker.process.stop(how)
                assert how == "kill" or code == 0, worker.describe()
            elif worker.task is not None:
                if how == "kill":
                    worker.task.cancel()
                else:
                    worker.stop.set()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker.task
        finally:
            worker.held.close()

    def start_workers(self, name: str, processes: list[bool]) -> None:
        if self.projection(name).slices is not None:
            for process in processes:  # any number of workers share the slices
                self._start(name, process)
        else:
            self._start(name, processes[0])

    def halt_workers(self, name: str, how: str) -> None:
        workers, self.workers[name] = self.workers[name], []
        for worker in workers:
            self.run(self._halt(worker, how))

    @step(
        name=st.sampled_from(PROJECTIONS), processes=st.lists(st.booleans(), min_size=1, max_size=2)
    )
    def start_projector(self, name: str, processes: list[bool]) -> None:
        if not self.workers[name]:
            self.start_workers(name, processes)

    @step(name=st.sampled_from(PROJECTIONS), how=st.sampled_from(["term", "kill"]))
    def stop_projector(self, name: str, how: str) -> None:
        self.halt_workers(name, how)

    @step(name=st.just("billing"), process=st.booleans())
    def change_slice_workers(self, name: str, process: bool) -> None:
        """A sliced projection's workers come and go: a second one joins, or one of two
        leaves (its slices move to the other at once)."""
        assert self.projection(name).slices is not None
        if len(self.workers[name]) < 2:
            self._start(name, process)
        else:
            self.run(self._halt(self.workers[name].pop(0), "term"))

    # -- what another client publishes ----------------------------------------------------

    async def _publish(self, subject: str, body: bytes, headers: dict[str, str]) -> int | None:
        """Publish as another client; the stream sequence it got (None: refused or
        dropped as a duplicate)."""
        try:
            ack = await self.other.jetstream().publish(subject, body, headers=headers or None)
        except Exception:  # refused: its headers asked for what the stream cannot do
            return None
        return None if ack.duplicate else int(ack.seq)

    @step(
        what=st.one_of(
            st.tuples(st.just("anything"), subjects, bodies, headers),
            st.tuples(st.just("with_a_relay_id"), any_ids, bodies | st.just(b""), st.booleans()),
            st.tuples(st.just("disagreeing_envelope"), forgeries, tampering),
            st.tuples(st.just("forgery"), forgeries),
        )
    )
    def publish_as_another_client(self, what: tuple[Any, ...]) -> None:
        """Another client publishes on ``sales.>``: anything; a relay-like id over any
        body; an envelope whose id, source or position disagrees with its id; or a message
        in the relay's form exactly that the log disagrees with (a forgery)."""
        kind, *arguments = what
        getattr(self, f"_publish_{kind}")(*arguments)

    def _publish_anything(self, subject: str, body: bytes, headers: dict[str, str]) -> None:
        self.run(self._foreign(subject, body, headers))

    def _publish_with_a_relay_id(self, msg_id: str, body: bytes, on_a_product: bool) -> None:
        subject = "sales.order.x.OrderCancelled"
        if on_a_product and self.products:
            subject = wire.subject("sales", "product", next(iter(self.products)), "ProductRepriced")
        self.run(self._foreign(subject, body, {wire.MSG_ID: msg_id}))

    def _publish_disagreeing_envelope(self, forgery: Forgery, tamper: str) -> None:
        """An envelope in the relay's form whose id, source or position disagrees with
        its ``Nats-Msg-Id`` (or that has none): not the relay's."""
        subject, body, headers = self._forged(forgery)
        envelope = orjson.loads(body)
        if tamper == "header":
            headers = {wire.MSG_ID: f"sales:{forgery.position + 1}"}
        elif tamper == "no header":
            headers = {}
        elif tamper == "logposition":
            envelope["logposition"] = forgery.position + 1
        else:
            envelope[tamper] = "billing" if tamper == "source" else "sales:0"
        self.run(self._foreign(subject, orjson.dumps(envelope), headers))

    def _publish_forgery(self, forgery: Forgery) -> None:
        """A message in the relay's form exactly, that the log disagrees with."""
        self.run(self._foreign(*self._forged(forgery)))

    def _forged(self, forgery: Forgery) -> tuple[str, bytes, dict[str, str]]:
        position = forgery.position
        relayed_messages = self.run(self._relayed()) if forgery.kind == "copy" else []
        if relayed_messages:  # one of the relay's messages again, under another id
            copied = relayed_messages[forgery.sku_index % len(relayed_messages)]
            position = orjson.loads(copied.data)["logposition"]
            subject, body = copied.subject, copied.data
        elif forgery.kind == "repriced" and self.products:
            sku = list(self.products)[forgery.sku_index % len(self.products)]
            data: Any = {"sku": sku, "unit_price": "0.01", "repriced_at": "2026-01-01T00:00:00Z"}
            subject, body, _ = relay_message(
                "sales", position, "sales.ProductRepriced", data,
                aggregate_id=sku, aggregate_type="product", aggregate_version=99,
            )  # fmt: skip
        elif forgery.kind == "cancelled" and self.orders:
            order = str(list(self.orders)[forgery.sku_index % len(self.orders)])
            data = {"order_id": order, "reason": "forged", "cancelled_at": "2026-01-01T00:00:00Z"}
            subject, body, _ = relay_message(
                "sales", position, "sales.OrderCancelled", data,
                aggregate_id=order, aggregate_version=99,
            )  # fmt: skip
        else:
            subject, body, _ = relay_message(
                "sales", position, "sales.OrderPlaced", b'"unreadable"', aggregate_version=99
            )
        epoch = forgery.epoch or (7 if relayed_messages else 0)  # a copy needs a new id
        return subject, body, {wire.MSG_ID: wire.message_id("sales", position, epoch)}

    async def _foreign(self, subject: str, body: bytes, headers: dict[str, str]) -> None:
        """Publish as another client, and note what the stored message is."""
        sequence = await self._publish(subject, body, headers)
        if sequence is None:
            return
        stored = await self.nc.jetstream().get_msg("sales", sequence)
        if isinstance(relayed("sales", stored), str):
            self.untrusted.add(sequence)
        else:
            self.forged.add(sequence)
            self.was_forged.add(sequence)
            self.forged_ids.add(orjson.loads(body)["id"])

    @precondition(lambda self: self.forged)
    @step()
    def remove_the_forgeries(self) -> None:
        """What the relay's error says to do: remove the message it names."""
        removed = sorted(self.forged)
        for sequence in removed:
            self.run(self.nc.jetstream().delete_msg("sales", sequence))
        self.forged.clear()
        self._replay_what_read(removed[0])

    def _replay_what_read(self, forged: int) -> None:
        """A projection cannot tell a message in the relay's form exactly from the relay's
        own (only credentials keep others from publishing one): it applied the forgery,
        or skipped later events as repeated, or parked their aggregate behind it. Once
        the forgery is gone, the operator replays each projection that read it."""
        for name in PROJECTIONS:
            snapshot = self._snapshot(name)
            if snapshot is None or max(snapshot.checkpoints.values(), default=0) < forged:
                continue
            running = [w.process is not None for w in self.workers[name]]
            self.halt_workers(name, "term")
            self.run(rebuild(self.projection(name), self.homes[name], self.nc))
            self.partial[name] = None
            if running:
                self.start_workers(name, running)

    # -- the stream losing its tail ----------------------------------------------------------

    @step(count=st.integers(1, 4))
    def lose_the_tail(self, count: int) -> None:
        """The stream's last messages are deleted; the relay carries the lost events
        again (at once when it runs, else when it starts)."""

        async def lose() -> None:
            js = self.nc.jetstream()
            for _ in range(count):
                last = await last_message(js, "sales")
                if last is None or last.seq is None:
                    return
                await js.delete_msg("sales", last.seq)
                if last.seq not in self.was_forged and mine(message(last)):
                    self.lost_from = min(last.seq, self.lost_from or last.seq)
                if last.seq in self.forged:
                    self.forged.discard(last.seq)
                    lost.append(last.seq)

        lost: list[int] = []
        self.run(lose())
        if lost:
            self._replay_what_read(min(lost))

    # -- handler failures, dead letters ----------------------------------------------------

    @precondition(lambda self: not self.fixed and not self.forged)
    @step(cli=st.booleans())
    def deploy_the_fix_and_retry(self, cli: bool) -> None:
        """Stop the catalogue's workers, deploy the fixed handler, retry its dead letters
        (the parked ones succeed; others' messages stay), start the workers again."""
        running = [w.process is not None for w in self.workers["catalogue"]]
        self.halt_workers("catalogue", "term")
        self.fixed = True
        with self.homes["catalogue"].reader() as db:
            before = [] if db is None else read_dead_letters(db)
        parked = {(d.stream, d.sequence) for d in before if not self._untrusted_letter(d)}
        if cli:
            retry = Process(self.folder, self.url, self.env(), "dlq", "retry", "catalogue")
            code = self.run(retry.finished())
            if self.homes["catalogue"].current() is None:
                assert code == 1 and "has no read model yet" in retry.stderr(), retry.describe()
            else:
                assert code == (1 if len(before) > len(parked) else 0), retry.describe()
                assert f"retried {len(parked)} dead letters" in retry.stderr(), retry.describe()
        elif self.homes["catalogue"].current() is not None:
            with self.homes["catalogue"].writer_lock():
                store = ReadModelStore(self.homes["catalogue"].live(), self.projection("catalogue"))
                try:
                    done, failed = retry_dead_letters(store, Catalogue.translators, parked)
                finally:
                    store.close()
            assert (done, failed) == (len(parked), []), failed
        with self.homes["catalogue"].reader() as db:
            after = [] if db is None else read_dead_letters(db)
        assert all(self._untrusted_letter(d) for d in after), after
        if running:
            self.start_workers("catalogue", running)

    @staticmethod
    def _untrusted_letter(letter: DeadLetter) -> bool:
        return letter.reason.startswith("not published by the sales relay")

    # -- replays and rewinds --------------------------------------------------------------

    async def _stream_exists(self) -> bool:
        try:
            await self.nc.jetstream().stream_info("sales")
        except NotFoundError:
            return False
        return True

    async def _head(self) -> int:
        try:
            return int((await self.nc.jetstream().stream_info("sales")).state.last_seq)
        except NotFoundError:
            return 0

    @precondition(lambda self: self.run(self._head()) > 0)
    @step(
        name=st.sampled_from(PROJECTIONS),
        start=st.none() | st.integers(1, 10_000),
        switch=st.booleans(),
        how=st.sampled_from(["task", "process", "killed process"]),
        kill_after=st.floats(0.0, 1.0),
    )
    def replay(
        self, name: str, start: int | None, switch: bool, how: str, kill_after: float
    ) -> None:
        head = self.run(self._head())
        if start is not None:
            start = 1 + start % (head + 1)  # 1 .. head + 1
        args = ["replay", name, "--json"]
        if start is not None:
            args += ["--from-seq", str(start)]
        if switch:
            args += ["--switch-partial"]
        if how == "task":
            result = self.run(
                rebuild(
                    self.projection(name),
                    self.homes[name],
                    self.nc,
                    starts_at=start or "beginning",
                    switch_partial=switch,
                )
            )
            report: dict[str, Any] = {
                "generation": result.generation.name,
                "switched": result.switched,
            }
        else:
            if how == "killed process":
                killed = Process(self.folder, self.url, self.env(), *args)
                self.run(asyncio.sleep(kill_after))
                if self.run(killed.stop("kill")) == 0:  # it had finished: a model of its own
                    done = orjson.loads(killed.stdout())
                    if not done["switched"]:
                        self.beside[name][done["generation"]] = start
            process = Process(self.folder, self.url, self.env(), *args)
            code = self.run(process.finished(60))
            assert code == 0, process.describe()
            report = orjson.loads(process.stdout())
        partial = start is not None and start > 1
        assert report["switched"] == (not partial or switch), report
        if report["switched"]:
            self.partial[name] = start if partial else None
        else:
            self.beside[name][report["generation"]] = start

    @step(name=st.sampled_from(PROJECTIONS), to=indexes, process=st.booleans())
    def rewind(self, name: str, to: int, process: bool) -> None:
        """Stop the projection, rewind it (refused, nothing changed, when the stream does
        not exist), start it again."""
        head, exists = self.run(self._head()), self.run(self._stream_exists())
        to %= head + 1
        running = [w.process is not None for w in self.workers[name]]
        self.halt_workers(name, "term")
        if process:
            rewound = Process(
                self.folder, self.url, self.env(), "rewind", name, "--to-seq", str(to)
            )
            code = self.run(rewound.finished(60))
            if exists:
                assert code == 0, rewound.describe()
            else:
                assert code == 1 and "does not exist" in rewound.stderr(), rewound.describe()
        elif exists:
            self.run(rewind(self.projection(name), self.homes[name], self.nc, to))
        else:
            with pytest.raises(ProjectionError, match="does not exist"):
                self.run(rewind(self.projection(name), self.homes[name], self.nc, to))
        if exists:
            self.partial[name] = None
        if running:
            self.start_workers(name, running)

    # -- status over the CLI ----------------------------------------------------------------

    @step(as_json=st.booleans())
    def status_over_the_cli(self, as_json: bool) -> None:
        """``toolkit status --json`` says what :func:`collect` does; without ``--json``, a
        row for the relay and for each projection."""
        self.run(self._settle())
        env = {**self.env(), "COLUMNS": "300"}  # a row a line
        process = Process(self.folder, self.url, env, "status", *(["--json"] if as_json else []))
        assert self.run(process.finished()) == 0, process.describe()
        if as_json:
            self.run(self._check_status(orjson.loads(process.stdout())))
            return
        table = process.stdout()
        assert "relay sales" in table, table
        assert all(f"projection {name}" in table for name in PROJECTIONS), table

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def promises_hold(self) -> None:
        self.run(self._settle())
        self.run(self._check_stream())
        for name in PROJECTIONS:
            self.run(self._check_model(name))
        self.run(self._check_status(self.run(collect(pipeline_system, self.settings, self.nc))))

    async def _messages(self) -> list[StreamMessage]:
        try:
            return await read_all(self.nc)
        except NotFoundError:
            return []

    async def _relayed(self) -> list[StreamMessage]:
        """The relay's messages on the stream, in stream order (forgeries left out)."""
        messages = await self._messages()
        return [m for m in messages if m.sequence not in self.was_forged and mine(m)]

    def _relay_ended(self) -> bool:
        if isinstance(self.relay, Process):
            return self.relay.popen.poll() is not None
        return self.relay is not None and self.relay[2].done()

    async def _settle(self) -> None:
        """Wait until what runs has done its work: the relay has carried the log (or
        stopped, when a forgery stands in its way), every projector is at the end of
        the stream."""
        expected = public_positions(self.sales)

        async def relayed_all() -> bool:
            if self._relay_ended():
                return True
            positions = [orjson.loads(m.data)["logposition"] for m in await self._relayed()]
            if self.forged:  # it stops at the forgery, once it has something to publish
                return positions == expected
            return positions == expected and self._relay_idle()

        if self.relay is not None:
            await self.wait("the relay carries the log", relayed_all, self._describe_relay)
        if self._relay_ended():
            relay, self.relay = self.relay, None
            if isinstance(relay, Process):
                self._relay_stopped_by_a_forgery(relay.stderr())
            else:
                assert relay is not None
                error = relay[2].exception()
                assert isinstance(error, RelayError), error
                self._relay_stopped_by_a_forgery(str(error))
        for name in PROJECTIONS:
            for worker in self.workers[name]:
                assert not worker.ended(), f"{name} stopped by itself: {worker.describe()}"
            if self.workers[name]:
                await self.wait(
                    f"{name} reaches the end of the stream",
                    self._at_end(name),
                    functools.partial(self._describe_workers, name),
                )

    async def _describe_workers(self, name: str) -> str:
        snapshot = self._snapshot(name)
        last = await last_message(self.nc.jetstream(), "sales")
        return (
            f"checkpoints {snapshot and snapshot.checkpoints}, the stream's last message "
            f"{last and last.seq}; " + "; ".join(w.describe() for w in self.workers[name])
        )

    async def _describe_relay(self) -> str:
        messages = await self._messages()
        stream = [(m.sequence, m.headers.get(wire.MSG_ID)) for m in messages]
        seen = f"the log's public positions {public_positions(self.sales)}, the stream {stream}"
        if isinstance(self.relay, Process):
            return f"{seen}; {self.relay.describe()}"
        assert isinstance(self.relay, tuple)
        return f"{seen}; relay task {self.relay[0].stats}"

    def _relay_idle(self) -> bool:
        return not isinstance(self.relay, tuple) or self.relay[0].idle

    def _at_end(self, name: str) -> Callable[[], Awaitable[bool]]:
        async def at_end() -> bool:
            last = await last_message(self.nc.jetstream(), "sales")
            end = 0 if last is None else int(last.seq or 0)
            snapshot = self._snapshot(name)
            if snapshot is None:
                return False
            return all(snapshot.checkpoints.get(k, -1) >= end for k in self._keys(name))

        return at_end

    def _keys(self, name: str) -> list[str]:
        slices = self.projection(name).slices
        if slices is not None:  # cut into slices once a worker ran on the generation
            snapshot = self._snapshot(name)
            cut = snapshot is not None and any("#" in k for k in snapshot.checkpoints)
            return [f"sales#{i}" for i in range(slices)] if cut else ["sales"]
        return ["sales"]

    def _snapshot(self, name: str, generation: Path | None = None) -> Snapshot | None:
        path = generation or self.homes[name].current()
        if path is None or not path.exists():
            return None
        db = open_generation(path, readonly=True)
        try:
            db.execute("BEGIN")
            try:
                checkpoints = dict(db.execute("SELECT stream, sequence FROM toolkit_checkpoint"))
            except db.Error:
                return None  # not created yet
            snapshot = Snapshot(
                path.name,
                checkpoints,
                dump(db),
                read_dead_letters(db),
                dict(db.execute("SELECT key, value FROM toolkit_meta")),
                partial_from(db),
                dict(db.execute("SELECT stream, position FROM toolkit_position")),
            )
            db.execute("COMMIT")
            return snapshot
        finally:
            db.close()

    async def _check_stream(self) -> None:
        """Each public event once, in log order: all of them unless the relay is
        stopped (then those it carried so far)."""
        expected = public_positions(self.sales)
        relayed_messages = await self._relayed()
        positions = []
        for message in relayed_messages:
            envelope = orjson.loads(message.data)
            position = envelope["logposition"]
            assert envelope["id"] == f"sales:{position}", envelope
            assert wire.log_position(message.headers[wire.MSG_ID]) == position
            positions.append(position)
        if self.relay is not None:
            assert positions == expected
            self.lost_from = None  # carried again, if the stream had lost any
        else:
            assert positions == expected[: len(positions)], (positions, expected)

    async def _check_model(self, name: str) -> None:
        """Readers' model = a clean build from the stream up to its checkpoint, from
        where it starts; its dead letters are the stream's doing."""
        snapshot = self._snapshot(name)
        if snapshot is None:
            return
        keys = self._keys(name)
        assert snapshot.partial == (
            {} if self.partial[name] is None else {"sales": self.partial[name]}
        )
        if self.lost_from is not None and max(snapshot.checkpoints.values(), default=0) >= (
            self.lost_from
        ):
            # The stream lost events the model holds, and no relay runs to carry them
            # again: the model is ahead of the stream until one does (then it is checked).
            assert self.relay is None
            return
        checkpoints = {snapshot.checkpoints.get(k) for k in keys}
        if len(checkpoints) != 1 or None in checkpoints:
            return  # slice workers stopped at different points: no prefix to compare
        (checkpoint,) = checkpoints
        assert checkpoint is not None
        held = max(snapshot.positions.values(), default=0)
        if any(
            r.position <= held
            for m in await self._messages()
            if m.sequence > checkpoint and (r := mine(m))
        ):
            # The stream lost events the model holds and the relay carried them again
            # after its checkpoint: no prefix of the stream is the model until it passes
            # them (it skips them, and is checked then).
            assert not self.workers[name]
            return
        clean = await self._clean_build(name, checkpoint)
        assert snapshot.rows == clean.rows, f"{name} differs from a clean build"

        def parked(letters: list[DeadLetter]) -> set[str]:
            return {orjson.loads(d.body)["id"] for d in letters if not self._untrusted_letter(d)}

        def untrusted(letters: list[DeadLetter]) -> set[int]:
            return {d.sequence for d in letters if self._untrusted_letter(d)}

        # Others' messages the stream lost since stay in the dead letters.
        assert parked(clean.dead) <= parked(snapshot.dead)
        assert parked(snapshot.dead) - parked(clean.dead) <= self.forged_ids
        assert untrusted(clean.dead) <= untrusted(snapshot.dead), (name, snapshot, clean)
        assert untrusted(snapshot.dead) <= self.untrusted, (name, snapshot)
        if name == "catalogue" and not self.fixed and not self.forged_ids:
            for letter in snapshot.dead:
                if not self._untrusted_letter(letter):
                    assert MARK in orjson.loads(letter.body)["subject"], letter

    async def _clean_build(self, name: str, checkpoint: int) -> Snapshot:
        folder = self.folder / f"clean-{next(self.builds)}"
        home = SQLiteHome(folder, name)
        try:
            store = ReadModelStore(home.live(), self.projection(name))
            try:
                start: StartPosition = self.partial[name] or "beginning"
                projector = Projector(
                    self.projection(name), store, self.nc, starts_at=start, stop_at=checkpoint
                )
                async with asyncio.timeout(WITHIN):
                    await projector.run(until_head=True)
            finally:
                store.close()
            snapshot = self._snapshot(name, home.path / home.live().name)
            assert snapshot is not None
            return snapshot
        finally:
            home.close()
            shutil.rmtree(folder, ignore_errors=True)

    async def _check_status(self, said: dict[str, Any]) -> None:
        head = await self._head()
        log_head = self.sales.recorder.max_notification_id() or 0
        sequences = [m.sequence for m in await self._messages()]
        sales = said["contexts"]["sales"]
        assert sales["stream_head"] == head
        assert sales["log_head"] == log_head
        relayed_messages = await self._relayed()
        relayed_to = (
            orjson.loads(relayed_messages[-1].data)["logposition"] if relayed_messages else 0
        )
        ends_in = [m.sequence for m in await self._messages() if mine(m)][-1:]
        if ends_in and ends_in[-1] in self.forged:  # the relay stops at it: status says so
            assert any(
                f"nats stream rmm sales {ends_in[-1]}" in problem
                for problem in sales.get("problems", [])
            ), sales
        assert sales["relayed_to"] == relayed_to, (sales, relayed_to)
        public = public_positions(self.sales)
        lag = sum(1 for position in public if position > relayed_to)  # events to carry
        assert sales["relay_lag"] == lag, sales
        if not isinstance(self.relay, tuple):  # a relay task of this process reports nothing
            assert sales["state"] == ("stopped" if self.relay is None else "running"), sales
        for name in PROJECTIONS:
            report = said["projections"][name]
            snapshot = self._snapshot(name)
            running = bool(self.workers[name])
            if snapshot is None:
                assert report["state"] == ("live" if running else "paused"), report
                continue
            assert report["generation"] == snapshot.generation
            assert report["state"] == ("live" if running else "paused"), report
            assert report["dead_letters"] == len(snapshot.dead)
            assert {
                k: v["checkpoint"] for k, v in report["streams"].items()
            } == snapshot.checkpoints
            for key, position in report["streams"].items():
                behind = sum(1 for q in sequences if q > position["checkpoint"])
                if running and key in self._keys(name):
                    assert behind == 0, (name, key, report)
                assert position["lag_events"] == behind, (name, key, report)
            assert (report.get("partial_from") or {}) == snapshot.partial
            beside = {
                b["generation"]: (b["partial_from"] or {}).get("sales") for b in report["beside"]
            }
            assert beside == self.beside[name], (name, report["beside"], self.beside[name])


@pytest.mark.timeout(TIMEOUT)
def test_the_pipeline_keeps_its_promises_whatever_happens(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    Pipeline.url = nats_server.url
    Pipeline.root = tmp_path
    machine = Pipeline if NIGHTLY else seed(SEED)(Pipeline)
    if REPRODUCE:  # "<version> <blob>" of a failure's @reproduce_failure
        version, blob = REPRODUCE.split()
        machine = reproduce_failure(version, blob.encode())(machine)
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            print_blob=True,
            phases=[p for p in Phase if SHRINK or p not in (Phase.shrink, Phase.explain)],
            verbosity=Verbosity.verbose
            if os.environ.get("TOOLKIT_PIPELINE_VERBOSE")
            else Verbosity.normal,
            suppress_health_check=list(HealthCheck),
        ),
    )
