"""Issue 21's "done when" for projections: four workers of each of two sliced projections
(``toolkit project billing`` and ``toolkit project ledger``, real CLI processes) on a
three-server JetStream cluster (R3 streams, the leases' bucket R3 too), the read models
in PostgreSQL, the log relayed by three ``toolkit relay sales --standby``. During the
catch-up of a pre-filled log and while commands flow, workers are SIGKILLed (and
replaced, as a supervisor would), stopped and started again, and cut off from NATS, the
active relay SIGKILLed, twice each, and a server of the cluster is killed and started
again each round (a follower of the stream, then its leader). A replica may then stop
for good, the server's defect (LEADER_REPLICA_DIES): the test says so, and every slice
must go on all the same
(a reader idle before messages it should have delivered places its consumer anew).
After each injection every slice (both projections') moves past where it was once the
workers injected on could no longer write (those of a worker gone move only when others
take them), within a bound; at the end the stream holds each event of the log once, in
log order, billing
equals a clean build row by row, the ledger (which numbers what it applies) holds each
order event once and each order's placing before its cancelling, and every slice's
checkpoint is at the stream's head."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import nats.errors
import orjson
import pytest
from nats.aio.client import Client

from benchmarks.relay import fill_log
from contexts.sales import Sales
from projections.billing import Accounts
from tests.conftest import Report, wait_for
from tests.faults.test_cluster_faults import cluster, cnc, leader, settled
from tests.flow import (
    assert_stream_is_the_log,
    cli_args,
    home_of,
    project_all,
    public_positions,
)
from tests.systems import OrderLedger
from toolkit.config import Settings
from toolkit.nats.embedded import EmbeddedCluster
from toolkit.nats.leases import BUCKET
from toolkit.readmodels import ReadModelHome
from toolkit.readmodels.backends import open_home
from toolkit.readmodels.tables import dead_letters, dump

__all__ = ["cluster", "cnc"]  # the fixtures: the module's three-server cluster, a client of it

ORDERS = 18_000
"""Pre-filled orders (fill_log: 18,010 events on the stream with its ten customers): a
catch-up long enough for the first injections to land in it."""
SYSTEM = "tests.systems:sliced_sales"
SLICES = {"billing": 64, "ledger": 16}
TTL = "2"
"""TOOLKIT_LEASE_TTL of the workers: a dead worker's slices move within about 2.7 s (the
default of 6 s is measured by the benchmark)."""
MOVES_WITHIN = 45.0
"""Seconds every slice has to pass the mark after an injection (a server killed: the
cluster's elections, the relay's and the readers' request timeouts)."""
LINE = [{"sku": "tea", "quantity": 1, "unit_price": "1.00"}]


class Cable:
    """A TCP proxy before each server of the cluster, which the test cuts and mends. Cut,
    every connection through it stalls (bytes held, neither dropped nor refused, as in a
    network partition): the client notices nothing but its requests timing out. The
    servers' INFO reaches the client without the cluster's other addresses, so a client
    that loses its server (one killed) fails over through the cable too."""

    def __init__(self, urls: list[str]) -> None:
        self._flowing = threading.Event()
        self._flowing.set()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.urls: list[str] = []
        for url in urls:
            listener = socket.create_server(("127.0.0.1", 0))
            self._sockets.append(listener)
            self.urls.append(f"nats://127.0.0.1:{listener.getsockname()[1]}")
            port = int(url.rsplit(":", 1)[1])
            threading.Thread(target=self._accept, args=(listener, port), daemon=True).start()

    @property
    def url(self) -> str:
        return ",".join(self.urls)

    def cut(self) -> None:
        self._flowing.clear()

    def mend(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._flowing.set()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _accept(self, listener: socket.socket, port: int) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            try:
                server = socket.create_connection(("127.0.0.1", port), timeout=2)
            except OSError:  # that server is down: the client tries another
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(
                    target=self._pump,
                    args=(source, sink),
                    kwargs={"server": source is server},
                    daemon=True,
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, *, server: bool) -> None:
        """Forward what ``source`` sends; from a server, its INFO without the other
        servers' addresses (a client that learned them would fail over to them straight,
        around the cable)."""
        pending = b""
        try:
            while data := source.recv(65536):
                self._flowing.wait()  # cut: hold what came, read no more
                if not server:
                    sink.sendall(data)
                    continue
                pending += data
                while (end := _protocol_unit(pending)) is not None:
                    unit, pending = pending[:end], pending[end:]
                    if unit.startswith(b"INFO "):
                        info = orjson.loads(unit[5:])
                        info.pop("connect_urls", None)
                        info.pop("ws_connect_urls", None)
                        unit = b"INFO " + orjson.dumps(info) + b"\r\n"
                    sink.sendall(unit)
        except OSError:
            pass
        finally:  # one side gone (a server killed): the other sees it closed
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def _protocol_unit(buffer: bytes) -> int | None:
    """The length of the first whole unit a NATS server sent in ``buffer`` (a control
    line, and for MSG and HMSG their payload), None while it is incomplete."""
    line = buffer.find(b"\r\n")
    if line < 0:
        return None
    head = buffer[:line].split()
    if head and head[0].upper() in (b"MSG", b"HMSG"):
        end = line + 2 + int(head[-1]) + 2  # the payload's size (HMSG: headers included)
        return end if len(buffer) >= end else None
    return line + 2


class Commands(threading.Thread):
    """Orders placed in the sales context (its SQLite log in the data folder), every
    other one cancelled at once and some others 25 orders later, until stopped."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(daemon=True)
        self.data_dir = data_dir
        self.halt = threading.Event()
        self.placed = self.cancelled = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            sales = Sales(data_dir=self.data_dir)
        except BaseException as exc:
            self.error = exc
            return
        try:
            customer = sales.register_customer("Flow", "flow@example.com")
            orders: list[Any] = []
            while not self.halt.is_set():
                i = len(orders)
                orders.append(sales.place_order(customer, LINE))
                self.placed += 1
                if i % 2 == 0:
                    sales.cancel_order(orders[i], "at once")
                    self.cancelled += 1
                later = i - 25
                if later >= 0 and later % 6 == 1:
                    sales.cancel_order(orders[later], "later")
                    self.cancelled += 1
                time.sleep(0.004)  # a pace, not a wait: commands keep coming at ~100/s
        except BaseException as exc:
            self.error = exc
        finally:
            sales.close()

    def stop(self) -> None:
        self.halt.set()
        self.join(30)
        if self.error is not None:
            raise AssertionError(f"the commands failed: {self.error!r}") from self.error


class Pair:
    """A 'host': one worker of each projection, started and ended together."""

    def __init__(self, label: str, processes: dict[str, subprocess.Popen[bytes]]) -> None:
        self.label, self.processes = label, processes


class Fleet:
    """The worker processes and the relay, each with its stderr in a file."""

    def __init__(self, settings: Settings, cluster_url: str, logs: Path) -> None:
        self.settings, self.cluster_url, self.logs = settings, cluster_url, logs
        self.env = {**os.environ, "TOOLKIT_STREAM_REPLICAS": "3", "TOOLKIT_LEASE_TTL": TTL}
        self.started: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def run(self, label: str, *args: str, url: str | None = None) -> subprocess.Popen[bytes]:
        log = self.logs / f"{label}.log"
        command = [sys.executable, "-m", "toolkit", *cli_args(self.settings), "-v"]
        command += ["--nats-url", url or self.cluster_url, "--system", SYSTEM, *args]
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=out, env=self.env)
        self.started.append((label, process, log))
        return process

    def pair(self, label: str, url: str | None = None) -> Pair:
        return Pair(
            label, {name: self.run(f"{label}-{name}", "project", name, url=url) for name in SLICES}
        )

    def said(self, process: subprocess.Popen[bytes]) -> str:
        return next(log for _, p, log in self.started if p is process).read_text(errors="replace")

    def all_said(self, what: str) -> int:
        return sum(log.read_text(errors="replace").count(what) for _, _, log in self.started)

    def __str__(self) -> str:
        return "\n".join(
            f"--- {label} (pid {p.pid}, exit {p.poll()}):\n{self.said(p)[-3000:]}"
            for label, p, _ in self.started
        )

    def stop(self) -> None:
        for _, process, _ in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process, _ in self.started:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def slice_checkpoints(home: ReadModelHome) -> dict[int, int]:
    """Each slice's checkpoint on stream sales in the live generation ({} before the
    workers made it)."""
    with home.reader() as db:
        if db is None:
            return {}
        try:
            rows = db.execute("SELECT stream, sequence FROM toolkit_checkpoint").fetchall()
        except db.Error:
            return {}
    return {int(k.partition("#")[2]): int(s) for k, s in rows if k.startswith("sales#")}


async def stream_replicas(nc: Client) -> str:
    """Stream sales' leader and replicas (current or not, lag): a replica that fell
    behind serves the consumers placed on it only what it has."""
    try:
        cluster = (await nc.jetstream(timeout=5).stream_info("sales")).cluster
    except nats.errors.Error as exc:
        return f"no stream info ({exc})"
    if cluster is None:
        return "no cluster info"
    peers = [f"{p.name} current={p.current} lag={p.lag}" for p in cluster.replicas or []]
    return f"leader {cluster.leader}; " + ", ".join(peers)


def server_troubles(cluster: EmbeddedCluster) -> str:
    """What the servers logged about streams that could not be written or caught up."""
    found = []
    for name, server in zip(cluster.names, cluster.servers, strict=True):
        with contextlib.suppress(OSError):
            for line in server.log_path.read_text(errors="replace").splitlines():
                if any(w in line for w in ("critical", "mismatch", "stalled", "Error applying")):
                    found.append(f"{name}: {line[-200:]}")
    return "\n".join(found[-10:]) or "no server logged a stream trouble"


async def stopped_replicas(nc: Client) -> list[str]:
    """The servers whose replica of sales is not current."""
    cluster = (await nc.jetstream(timeout=5).stream_info("sales")).cluster
    replicas = (cluster.replicas or []) if cluster else []
    return [p.name for p in replicas if p.name is not None and not p.current]


def defect(cluster: EmbeddedCluster) -> bool:
    """Whether a server logged the defect that stops a replica for good
    (:data:`LEADER_REPLICA_DIES`): waiting for every replica to be current is then
    pointless (each wait for it cost a minute)."""
    return "last msgid mismatch" in server_troubles(cluster)


LEADER_REPLICA_DIES = (
    "nats-server 2.15.1: the stream leader SIGKILLed while the relay publishes, started "
    "again, has its replica stop for good ('critical write error: last msgid mismatch', "
    "the relay's Nats-Expected-Last-Msg-Id, seen after a follower's kill too); a reader "
    "whose R1 consumer is placed on that replica got idle heartbeats and nothing else: "
    "the projector now places a new consumer when its reader delivers nothing for 5 s "
    "from a sequence the stream holds"
)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("read_models", ["postgres"], indirect=True)
async def test_slice_workers_on_a_cluster_survive_kills_stops_cuts_and_a_server_killed(
    report: Report,
    cluster: EmbeddedCluster,
    cnc: Client,
    data_dir: Path,
    read_models: Settings,
    tmp_path: Path,
) -> None:
    """Round 1 kills a follower of stream sales, round 2 its leader."""
    began = time.monotonic()

    def at() -> str:
        return f"{time.monotonic() - began:.1f} s"

    sales = Sales(data_dir=data_dir)
    fill_log(sales, ORDERS)
    prefilled = len(public_positions(sales))
    report(f"log: {ORDERS:,} orders pre-filled, {prefilled:,} public events, in {at()}")
    logs = tmp_path / "logs"
    logs.mkdir()
    fleet = Fleet(read_models, cluster.url, logs)
    cable = Cable(cluster.urls)
    commands = Commands(data_dir)
    homes = {name: open_home(read_models, name) for name in SLICES}
    victim: str | None = None
    phases: list[str] = []

    def checkpoints() -> dict[str, dict[int, int]]:
        return {name: slice_checkpoints(home) for name, home in homes.items()}

    def lowest() -> int:
        found = checkpoints()
        return min(
            (min(c.values()) if len(c) == SLICES[n] else 0 for n, c in found.items()), default=0
        )

    def phase() -> str:
        """Where the injection lands, and the lowest slice then."""
        low = lowest()
        phases.append("catch-up" if low < prefilled else "commands")
        return f"{'during the catch-up' if low < prefilled else 'commands flowing'}, lowest {low:,}"

    async def slices_move(after: str) -> None:
        """Every slice of both projections passes where it was when the workers injected
        on could no longer write: those of a worker gone move only when others take them."""
        marks = checkpoints()
        start = time.monotonic()

        def passed() -> bool:
            found = checkpoints()
            return all(
                len(found[n]) == SLICES[n]
                and all(found[n][k] > marks[n].get(k, 0) for k in range(SLICES[n]))
                for n in SLICES
            )

        try:
            await wait_for(passed, within=MOVES_WITHIN, interval=0.1)
        except AssertionError:
            found = checkpoints()
            stuck = {
                n: sorted(k for k in range(SLICES[n]) if found[n].get(k, 0) <= marks[n].get(k, 0))
                for n in SLICES
            }
            replicas = await stream_replicas(cnc)
            raise AssertionError(
                f"slices stuck after {after}: {stuck}\nstream sales: {replicas}\n"
                f"{server_troubles(cluster)}\n{fleet}"
            ) from None
        report(f"verified: every slice (64 + 16) moved on within "
               f"{time.monotonic() - start:.1f} s of {after}")  # fmt: skip

    try:
        # Three relays: one relays, two stand by (the active one is killed each round).
        relays = [fleet.run(f"relay{i}", "relay", "sales", "--standby") for i in range(3)]

        def active_relay() -> subprocess.Popen[bytes] | None:
            found = [
                p for p in relays if p.poll() is None and "relaying sales log" in fleet.said(p)
            ]
            assert len(found) <= 1, [fleet.said(p) for p in found]
            return found[0] if found else None

        pairs = [fleet.pair(f"w{i}", url=cable.url if i == 2 else None) for i in range(4)]
        commands.start()
        # The first injection as soon as the workers have committed something of the log.
        await wait_for(lambda: any(any(c.values()) for c in checkpoints().values()), within=60)
        report(f"4 workers of billing and 4 of ledger applying (pair w2 through the cable), {at()}")
        for round_ in (1, 2):
            # SIGKILL, and a new one started as a supervisor would.
            killed = pairs[0]
            for process in killed.processes.values():
                process.send_signal(signal.SIGKILL)
            for process in killed.processes.values():
                process.wait(10)
            pairs[0] = fleet.pair(f"{killed.label}r{round_}")
            report(f"round {round_} ({phase()}): SIGKILL of pair {killed.label}, a new pair "
                   f"started, {at()}")  # fmt: skip
            await slices_move("the SIGKILL")

            # The active relay SIGKILLed too: a standby takes over; a new standby started.
            await wait_for(lambda: active_relay() is not None, within=30)
            relay = active_relay()
            assert relay is not None
            relay.send_signal(signal.SIGKILL)
            relay.wait(10)
            relays.append(fleet.run(f"relay-r{round_}", "relay", "sales", "--standby"))
            await wait_for(lambda: active_relay() is not None, within=30)
            report(f"round {round_} ({phase()}): SIGKILL of the active relay, a standby took "
                   f"over, {at()}")  # fmt: skip

            # SIGTERM: it gives its slices back, and is started again.
            stopped = pairs[1]
            for process in stopped.processes.values():
                process.send_signal(signal.SIGTERM)
            for process in stopped.processes.values():
                assert process.wait(20) == 0, fleet.said(process)
                assert "slices given back" in fleet.said(process), fleet.said(process)
            pairs[1] = fleet.pair(f"{stopped.label}s{round_}")
            report(f"round {round_} ({phase()}): SIGTERM of pair {stopped.label} (exit 0, "
                   f"slices given back), started again, {at()}")  # fmt: skip
            await slices_move("the stop and start")

            # Cut off from NATS: once its leases could not be renewed it writes nothing
            # more (it stopped counting on them before), and the others take its slices.
            cut = pairs[2]
            said = {name: len(fleet.said(p)) for name, p in cut.processes.items()}
            cable.cut()
            report(f"round {round_} ({phase()}): pair {cut.label} cut off from NATS, {at()}")
            for name, process in cut.processes.items():

                def failing(p: subprocess.Popen[bytes] = process, since: int = said[name]) -> bool:
                    return "could not be renewed" in fleet.said(p)[since:]

                await wait_for(failing, within=MOVES_WITHIN, interval=0.1)
            report(f"round {round_}: pair {cut.label} says its leases could not be renewed, "
                   f"{at()}")  # fmt: skip
            await slices_move("the pair's leases failing (its slices taken by the others)")
            said = {name: len(fleet.said(p)) for name, p in cut.processes.items()}
            cable.mend()
            report(f"round {round_}: pair {cut.label} reconnected, {at()}")
            for name, process in cut.processes.items():

                def took_again(
                    p: subprocess.Popen[bytes] = process, since: int = said[name]
                ) -> bool:
                    return " slices +" in fleet.said(p)[since:]

                await wait_for(took_again, within=MOVES_WITHIN, interval=0.1)
                assert process.poll() is None, fleet.said(process)
            await slices_move("the reconnection (the pair holds slices again)")

            # A server of the cluster killed: a follower of the stream, then its leader, once
            # every replica is current again (R3 outlives one server down, not two: the one
            # restarted in round 1 may still be catching up). A replica the server's defect
            # stopped never is: then the leader's kill would take the quorum, and is left out.
            server_killed = "follower" if round_ == 1 else "leader"
            if round_ == 2:
                try:
                    await settled(cnc, within=60, unless=lambda: defect(cluster))
                except AssertionError:
                    troubles = server_troubles(cluster)
                    assert "last msgid mismatch" in troubles, troubles
                    report("server defect: a replica of sales stopped for good; the leader's "
                           "kill is left out (two replicas left)")  # fmt: skip
                    continue
            led_by = await leader(cnc)
            victim = (
                led_by
                if server_killed == "leader"
                else next(n for n in cluster.names if n != led_by)
            )
            cluster.server(victim).kill()
            report(f"injected ({phase()}): SIGKILL of server {victim} ({server_killed} of "
                   f"stream sales), {at()}")  # fmt: skip
            await slices_move(f"server {victim}'s SIGKILL")
            await cluster.server(victim).start_async()
            victim = None
            report(f"injected: the server started again, {at()}")
            await slices_move("the server's restart")

        commands.stop()
        expected = len(public_positions(sales))
        try:
            await settled(cnc, within=60, unless=lambda: defect(cluster))
        except AssertionError:
            replicas = await stream_replicas(cnc)
            troubles = server_troubles(cluster)
            if "last msgid mismatch" not in troubles:
                raise AssertionError(
                    f"stream sales did not settle: {replicas}\n{troubles}"
                ) from None
            # The server's defect (LEADER_REPLICA_DIES): one replica stopped for good; the
            # stream goes on with two, and so must every slice (readers placed anew).
            report(f"server defect: a replica of sales stopped for good: {replicas}")
        await wait_for(lambda: lowest() == expected, within=90, interval=0.1)
        report(f"commands stopped: {commands.placed:,} orders placed, {commands.cancelled:,} "
               f"cancelled; every slice at the head {expected:,}, {at()}")  # fmt: skip
        if defect(cluster):
            # The server with the stopped replica taken out, as an operator would (its
            # replica cannot be peer-removed on three servers: no fourth to move it to):
            # the clean builds below then read from the two whole replicas (with it, the
            # final reads hung until the test's timeout, twice in a day's runs).
            for name in await stopped_replicas(cnc):
                cluster.server(name).kill()
                report(f"server {name}, whose replica stopped, taken out for the checks, {at()}")
        fleet.stop()
        for label, process, _ in fleet.started:
            assert process.returncode in (0, -signal.SIGKILL), f"{label}: {fleet.said(process)}"
        assert "catch-up" in phases and "commands" in phases, phases
        info = await cnc.jetstream().stream_info("sales")
        assert info.config.num_replicas == 3 and info.state.last_seq == expected
        await assert_stream_is_the_log(cnc, sales)  # each event once, in log order

        # Billing: equal row by row to a clean build (a plain Projector, SQLite).
        await project_all(Accounts(), tmp_path / "clean", cnc)
        with homes["billing"].reader() as faulted, home_of(tmp_path / "clean", "billing") as clean:
            assert faulted is not None
            with clean.reader() as reference:
                assert reference is not None
                billing = dump(faulted)
                assert billing == dump(reference)
                assert not dead_letters(faulted)
                sliced = faulted.execute("SELECT stream, sequence FROM toolkit_checkpoint")
                assert sorted(r for r in sliced if "#" in r[0]) == sorted(
                    (f"sales#{k}", expected) for k in range(64)
                )
        # Ledger: each order event once, each order's placing before its cancelling.
        await project_all(OrderLedger(), tmp_path / "clean", cnc)
        with homes["ledger"].reader() as faulted, home_of(tmp_path / "clean", "ledger") as clean:
            assert faulted is not None
            with clean.reader() as reference:
                assert reference is not None
                rows = faulted.execute("SELECT applied, order_id, kind, worker FROM entry")
                entries = [tuple(r) for r in rows]
                clean_rows = reference.execute("SELECT order_id, kind FROM entry")
                wanted = sorted(tuple(r) for r in clean_rows)
                assert not dead_letters(faulted)
                sliced = faulted.execute("SELECT stream, sequence FROM toolkit_checkpoint")
                assert sorted(r for r in sliced if "#" in r[0]) == sorted(
                    (f"sales#{k}", expected) for k in range(16)
                )
        assert sorted((o, k) for _, o, k, _ in entries) == wanted  # each once, none missing
        applied: dict[str, dict[str, int]] = {}
        for number, order, kind, _ in entries:
            applied.setdefault(order, {})[kind] = number
        cancelled = [o for o, kinds in applied.items() if "cancelled" in kinds]
        disordered = [o for o in cancelled if not applied[o]["placed"] < applied[o]["cancelled"]]
        assert not disordered, disordered[:10]
        workers = len({w for *_, w in entries})
        fenced = fleet.all_said("was moved by another worker")
        rows_billing = sum(len(r) for r in billing.values())
        report(
            f"verified: billing equal row by row to a clean build ({rows_billing:,} rows); "
            f"the ledger holds each of {len(wanted):,} order events once, {len(cancelled):,} "
            f"orders placed before cancelled, applied by {workers} worker processes; every "
            f"slice's checkpoint at the head {expected:,}; 0 dead letters; {fenced} batches "
            f"refused by the fence; in {at()}"
        )
    finally:
        commands.halt.set()
        fleet.stop()
        cable.close()
        with contextlib.suppress(Exception):  # the next test of the module wants no stream
            await cnc.jetstream(timeout=5).delete_key_value(BUCKET)
        for home in homes.values():
            home.close()
        sales.close()
        if victim is not None:
            cluster.server(victim).start()
