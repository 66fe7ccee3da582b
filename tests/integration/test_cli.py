from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from contexts.sales import Sales
from tests.conftest import nats_servers_using
from tests.flow import cli_args, home_of
from toolkit.cli.commands import EXIT_INTERRUPTED
from toolkit.config import Settings
from toolkit.readmodels import tables
from toolkit.readmodels.sqlite import SQLiteHome
from toolkit.readmodels.tables import dump

SUBCOMMANDS = ["demo", "relay", "project", "replay", "rewind", "status", "serve"]


def toolkit(
    *args: str, tmp: Path, timeout: float = 110, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": str(tmp)}
    env.pop("NATS_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "toolkit", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=cwd or tmp,
    )


def sales_log(data: Path, orders: int) -> Path:
    """A sales log in ``data``: one customer and ``orders`` orders of 1..N teas."""
    sales = Sales(data_dir=data)
    ann = sales.register_customer("Ann", "ann@example.com")
    for quantity in range(1, orders + 1):
        sales.place_order(ann, [{"sku": "tea", "quantity": quantity, "unit_price": "1.00"}])
    sales.close()
    return data


def test_help_lists_every_subcommand(tmp_path: Path) -> None:
    done = toolkit("--help", tmp=tmp_path)
    assert done.returncode == 0
    for name in SUBCOMMANDS:
        assert f"    {name} " in done.stdout


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_subcommand_explains_itself(name: str, tmp_path: Path) -> None:
    done = toolkit(name, "--help", tmp=tmp_path)
    assert done.returncode == 0
    assert f"usage: toolkit {name}" in done.stdout
    assert len(done.stdout.splitlines()) > 4


def test_bad_usage_exits_2(tmp_path: Path) -> None:
    assert toolkit("nonsense", tmp=tmp_path).returncode == 2
    assert toolkit("demo", "--orders", "-3", tmp=tmp_path).returncode == 2


def test_unknown_names_get_one_readable_line(tmp_path: Path) -> None:
    done = toolkit("project", "nowhere", "--once", tmp=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "toolkit: error: no projection named 'nowhere' "
        "(known: billing, dispatches, invoices, shipping)"
    )
    done = toolkit("--system", "no.such:thing", "relay", "sales", tmp=tmp_path)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1


def test_demo_runs_the_whole_flow_and_leaves_nothing_behind(tmp_path: Path) -> None:
    started = time.monotonic()
    done = toolkit("demo", "--orders", "400", "--customers", "40", tmp=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "equal to the live model" in done.stdout
    assert "GET /billing/accounts/" in done.stdout
    said = " ".join(done.stdout.split())  # rich wraps lines at 80 columns
    # The chain: each order a shipment and an invoice; half the orders not cancelled (40)
    # dispatched, two in three paid; the dispatched ones marked shipped by sales.
    assert (
        "shipping's policy requested 400 shipments and billing's issued 400 invoices for 400 "
        "orders (40 cancelled: called off, voided)"
    ) in said
    assert "dispatched 180 shipments and paid 240 invoices" in said
    assert "-> shipment dispatched -> order shipped; invoice paid" in said
    assert "unchanged by the replay, with the policies running: no policy re-ran" in said
    assert re.search(r"policy mark-shipped: reacted / rejected / parked │ +180 / 0 / 0", said)
    assert time.monotonic() - started < 100
    assert not nats_servers_using(tmp_path)
    assert list(tmp_path.iterdir()) == []  # its data folder is gone too


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_an_interrupted_demo_leaves_no_server(tmp_path: Path, sig: signal.Signals) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("NATS_URL", None)
    demo = subprocess.Popen(
        [sys.executable, "-m", "toolkit", "demo", "--orders", "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # (a shell's background job ignores SIGINT, and so would the demo)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert demo.stdout is not None
    while "placing" not in demo.stdout.readline():  # commands are flowing
        assert demo.poll() is None, demo.stderr.read() if demo.stderr else ""
    assert nats_servers_using(tmp_path)
    demo.send_signal(sig)
    demo.wait(30)
    if sig == signal.SIGINT:  # one line and its own status: not a crash (SIGSEGV was -11)
        assert demo.returncode == EXIT_INTERRUPTED, demo.stderr.read() if demo.stderr else ""
        assert demo.stderr is not None and "toolkit: interrupted" in demo.stderr.read()
    else:
        assert demo.returncode == -sig
    deadline = time.monotonic() + 10
    while nats_servers_using(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not nats_servers_using(tmp_path)


def test_relay_project_and_replay_commands_share_a_data_folder(tmp_path: Path) -> None:
    data = sales_log(tmp_path / "data", orders=5)

    relayed = toolkit("--data-dir", str(data), "relay", "sales", "--once", tmp=tmp_path)
    assert relayed.returncode == 0, relayed.stderr
    assert "relayed to log position 6: 6 published" in relayed.stderr
    projected = toolkit("--data-dir", str(data), "project", "shipping", "--once", tmp=tmp_path)
    assert projected.returncode == 0, projected.stderr
    home = SQLiteHome(data, "shipping")
    with home.reader() as db:
        assert db is not None
        live = dump(db)
    assert len(live["shipment"]) == 5

    replayed = toolkit("--data-dir", str(data), "replay", "shipping", tmp=tmp_path)
    assert replayed.returncode == 0, replayed.stderr
    with home.reader() as db:
        assert db is not None
        assert dump(db) == live
    assert home.current() is not None and home.current().name == "g000002.sqlite"  # type: ignore[union-attr]
    assert not nats_servers_using(tmp_path)


def test_serve_answers_http_and_stops_on_sigterm(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "toolkit",
            "--data-dir",
            str(tmp_path),
            "serve",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                schema = httpx.get(f"http://127.0.0.1:{port}/openapi.json").json()
                break
            except httpx.ConnectError:
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        assert "/shipping/shipments/{shipment_id}" in schema["paths"]
        assert "/billing/accounts/{account_id}" in schema["paths"]
        no_model = httpx.get(f"http://127.0.0.1:{port}/shipping/shipments")
        assert no_model.status_code == 503
        assert "has no read model yet" in no_model.text
    finally:
        server.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert server.wait(15) in (0, -signal.SIGTERM)
        assert server.stderr is not None
        assert b"Finished server process" in server.stderr.read()


def test_a_sliced_projection_from_the_command_line_and_the_old_partition_options_gone(
    tmp_path: Path,
) -> None:
    """``toolkit project billing`` runs a worker of billing's 64 slices (alone, it holds
    them all); the static ``--partition K --partitions N`` of before slices is a usage
    error (docs/projections.md says how to migrate)."""
    data = sales_log(tmp_path / "data", orders=20)
    assert (
        toolkit("--data-dir", str(data), "relay", "sales", "--once", tmp=tmp_path).returncode == 0
    )
    worker = toolkit("--data-dir", str(data), "project", "billing", "--once", tmp=tmp_path)
    assert worker.returncode == 0, worker.stderr
    assert "of its 64 slices" in worker.stdout + worker.stderr
    with SQLiteHome(data, "billing").reader() as db:
        assert db is not None
        model = dump(db)
        checkpoints = dict(tables.checkpoints(db))
    assert len(model["charge"]) == 20
    assert set(checkpoints) == {f"sales#{k}" for k in range(64)}
    old = toolkit(
        "--data-dir", str(data), "project", "billing", "--partition", "0", "--partitions", "2",
        tmp=tmp_path,
    )  # fmt: skip
    assert old.returncode == 2
    assert "unrecognized arguments: --partition 0 --partitions 2" in old.stderr


def test_status_json_reports_lag_as_events_arrive(tmp_path: Path) -> None:
    data = tmp_path / "data"
    sales = Sales(data_dir=data)
    ann = sales.register_customer("Ann", "ann@example.com")
    line = [{"sku": "tea", "quantity": 1, "unit_price": "1.00"}]
    for _ in range(5):
        sales.place_order(ann, line)
    run = ["--data-dir", str(data)]
    assert toolkit(*run, "relay", "sales", "--once", tmp=tmp_path).returncode == 0
    assert toolkit(*run, "project", "shipping", "--once", tmp=tmp_path).returncode == 0

    def status() -> dict[str, Any]:
        done = toolkit(*run, "status", "--json", tmp=tmp_path)
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    before = status()
    assert before["projections"]["shipping"]["streams"]["sales"] == {
        "checkpoint": 6,
        "lag_events": 0,
        "lag_seconds": 0.0,
    }
    for _ in range(7):
        sales.place_order(ann, line)
    assert toolkit(*run, "relay", "sales", "--once", tmp=tmp_path).returncode == 0
    for _ in range(3):
        sales.place_order(ann, line)  # in the log, not relayed yet
    sales.close()
    with SQLiteHome(data, "shipping").writer_lock():  # as a running projector would
        after = status()
    shipping = after["projections"]["shipping"]
    assert shipping["streams"]["sales"]["lag_events"] == 7
    assert shipping["streams"]["sales"]["lag_seconds"] > 0
    assert shipping["state"] == "live"
    assert after["streams"]["sales"]["head"] == 13
    assert after["contexts"]["sales"]["relay_lag"] == 3
    assert after["projections"]["billing"]["generation"] is None  # never run


def test_replay_options_rewind_and_versions(tmp_path: Path, read_models: Settings) -> None:
    sales_log(read_models.data_dir, orders=10)
    run = cli_args(read_models)  # read models in SQLite files, or in PostgreSQL
    assert toolkit(*run, "relay", "sales", "--once", tmp=tmp_path).returncode == 0

    def shipments() -> int:
        with home_of(read_models, "shipping") as home, home.reader() as db:
            assert db is not None
            return len(dump(db)["shipment"])

    # A replay of a range, reported as JSON: sequences 4..8 are five orders; readers
    # are switched to that partial model only because they are told to.
    done = toolkit(
        *run, "replay", "shipping", "--from-seq", "4", "--to-seq", "8", "--switch-partial",
        "--json", tmp=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["applied"] == 5 and report["checkpoints"] == {"sales": 8}
    assert report["switched"] and report["partial_from"] == {"sales": 4}
    assert shipments() == 5

    # Rewind: the model as it was after sequence 3 (the customer and two orders).
    assert toolkit(*run, "project", "shipping", "--once", tmp=tmp_path).returncode == 0
    with home_of(read_models, "shipping") as home, home.writer_lock():  # running: refused
        busy = toolkit(*run, "rewind", "shipping", "--to-seq", "3", tmp=tmp_path)
    assert busy.returncode == 1 and "stop it first" in busy.stderr
    assert toolkit(*run, "rewind", "shipping", "--to-seq", "3", tmp=tmp_path).returncode == 0
    assert shipments() == 2
    assert toolkit(*run, "project", "shipping", "--once", tmp=tmp_path).returncode == 0
    assert shipments() == 10  # it went on from sequence 4

    # The code moves to version 2: running it on the version 1 model is refused...
    v2 = [*run, "--system", "tests.systems:shipping_v2"]
    stale = toolkit(*v2, "project", "shipping", "--once", tmp=tmp_path, cwd=Path.cwd())
    assert stale.returncode == 1
    assert "is version 1 but the code is version 2" in stale.stderr
    status = json.loads(toolkit(*v2, "status", "--json", tmp=tmp_path, cwd=Path.cwd()).stdout)
    assert status["projections"]["shipping"]["state"] == "rebuild due"
    # ...unless asked to rebuild it first.
    rebuilt = toolkit(
        *v2, "project", "shipping", "--once", "--rebuild", tmp=tmp_path, cwd=Path.cwd()
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert shipments() == 10


def relayed_and_projected(tmp_path: Path, orders: int) -> tuple[list[str], SQLiteHome]:
    """A data folder whose sales log (a customer, then ``orders`` orders) is relayed and
    projected into shipping: its CLI options and shipping's home."""
    data = sales_log(tmp_path / "data", orders=orders)
    run = ["--data-dir", str(data)]
    assert toolkit(*run, "relay", "sales", "--once", tmp=tmp_path).returncode == 0
    assert toolkit(*run, "project", "shipping", "--once", tmp=tmp_path).returncode == 0
    return run, SQLiteHome(data, "shipping")


def test_a_replay_from_a_sequence_is_kept_beside_the_live_model(tmp_path: Path) -> None:
    run, home = relayed_and_projected(tmp_path, orders=10)  # sequences 1 to 11
    with home.reader() as db:
        assert db is not None
        live = dump(db)

    def status() -> dict[str, Any]:
        done = toolkit(*run, "status", "--json", tmp=tmp_path)
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout)["projections"]["shipping"])

    done = toolkit(*run, "replay", "shipping", "--from-seq", "4", tmp=tmp_path)
    assert done.returncode == 0, done.stderr
    kept = home.path / "g000002.sqlite"
    assert "a partial model: it holds only the events of sales from sequence 4 on" in done.stderr
    assert "readers go on using g000001.sqlite" in done.stderr
    assert re.search(r"replaying shipping: \d+/8 events", done.stderr)  # 4 to 11, not 11
    assert f"sqlite3 -readonly {kept}" in done.stderr and "--switch-partial" in done.stderr
    assert home.current() == home.path / "g000001.sqlite"
    with home.reader() as db:
        assert db is not None and dump(db) == live  # readers: the whole model
    shipping = status()
    assert shipping["generation"] == "g000001.sqlite" and shipping["partial_from"] is None
    assert shipping["beside"] == [
        {"generation": kept.name, "partial_from": {"sales": 4}, "checkpoints": {"sales": 11}}
    ]

    done = toolkit(
        *run, "replay", "shipping", "--from-seq", "4", "--switch-partial", "--json", tmp=tmp_path
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["switched"] and report["partial_from"] == {"sales": 4}
    assert report["previous"] == "g000001.sqlite" and report["previous_dropped"]
    shipping = status()
    assert shipping["generation"] == "g000003.sqlite"
    assert shipping["partial_from"] == {"sales": 4}  # readers see a partial model: said
    assert [g["generation"] for g in shipping["beside"]] == [kept.name]

    described = toolkit("replay", "--help", tmp=tmp_path).stdout
    assert "--switch-partial" in described and "kept beside the live one" in described


def test_rewind_past_the_head_or_of_a_missing_stream_is_refused(tmp_path: Path) -> None:
    nowhere = tmp_path / "nowhere"  # no stream sales on its server
    missing = toolkit(
        "--data-dir", str(nowhere), "rewind", "shipping", "--to-seq", "0", tmp=tmp_path
    )
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        "toolkit: error: stream sales does not exist on this NATS server, so projection "
        "shipping has nothing to replay (nothing changed; is this the server its context "
        "publishes to?)"
    )
    empty = SQLiteHome(nowhere, "shipping")
    assert empty.current() is None and empty.generations() == []

    run, home = relayed_and_projected(tmp_path, orders=10)  # sequences 1 to 11
    with home.reader() as db:
        assert db is not None
        live = dump(db)
    before = sorted(p.name for p in home.path.iterdir())
    past = toolkit(*run, "rewind", "shipping", "--to-seq", "12", tmp=tmp_path)
    assert past.returncode == 1
    assert past.stderr.strip() == (
        "toolkit: error: cannot rewind shipping to sequence 12: stream sales ends at "
        "sequence 11 (nothing changed)"
    )
    below = toolkit(*run, "rewind", "shipping", "--to-seq", "-1", tmp=tmp_path)
    assert below.returncode == 1 and len(below.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in home.path.iterdir()) == before
    with home.reader() as db:
        assert db is not None and dump(db) == live

    at_head = toolkit(*run, "rewind", "shipping", "--to-seq", "11", tmp=tmp_path)
    assert at_head.returncode == 0, at_head.stderr
    assert "it goes on from 12 when it next runs" in at_head.stderr
    described = toolkit("rewind", "--help", tmp=tmp_path).stdout
    assert "past a stream's head" in " ".join(described.split())


def test_an_unreadable_marker_is_named_with_what_to_do(tmp_path: Path) -> None:
    run, home = relayed_and_projected(tmp_path, orders=3)
    building = home.path / "BUILDING"
    building.write_bytes(b"")  # what a replay killed as it wrote the marker used to leave
    done = toolkit(*run, "replay", "shipping", tmp=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"toolkit: error: the marker {building} should name a generation of projection "
        "shipping (like g000001.sqlite) but is empty: remove it and run 'toolkit replay "
        "shipping' (it starts over)"
    )
    building.unlink()
    done = toolkit(*run, "replay", "shipping", tmp=tmp_path)
    assert done.returncode == 0, done.stderr

    current = home.path / "CURRENT"
    current.write_text("g0000")  # half a name
    done = toolkit(*run, "project", "shipping", "--once", tmp=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"toolkit: error: the marker {current} should name a generation of projection "
        "shipping (like g000001.sqlite) but holds 'g0000': write into it the name of the "
        "generation readers should use (there are: g000002.sqlite), or remove it and run "
        "'toolkit replay shipping'"
    )
    status = toolkit(*run, "status", "--json", tmp=tmp_path)
    assert status.returncode == 0, status.stderr
    shipping = json.loads(status.stdout)["projections"]["shipping"]
    assert shipping["state"] == "unreadable" and str(current) in shipping["reason"]
    current.write_text("g000002.sqlite\n")
    assert toolkit(*run, "project", "shipping", "--once", tmp=tmp_path).returncode == 0
