from __future__ import annotations

import json
import os
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
from toolkit.config import Settings
from toolkit.home import ProjectionHome
from toolkit.store import dump

SUBCOMMANDS = ["demo", "relay", "project", "replay", "rewind", "status", "serve"]


def toolkit(
    *args: str, tmp: Path, timeout: float = 110, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": str(tmp)}
    env.pop("NATS_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "toolkit.cli", *args],
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
        "toolkit: error: no projection named 'nowhere' (known: billing, shipping)"
    )
    done = toolkit("--system", "no.such:thing", "relay", "sales", tmp=tmp_path)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1


def test_demo_runs_the_whole_flow_and_leaves_nothing_behind(tmp_path: Path) -> None:
    started = time.monotonic()
    done = toolkit("demo", "--orders", "400", "--customers", "40", tmp=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "equal to the live model" in done.stdout
    assert "GET /billing/accounts/" in done.stdout
    assert time.monotonic() - started < 100
    assert not nats_servers_using(tmp_path)
    assert list(tmp_path.iterdir()) == []  # its data folder is gone too


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_an_interrupted_demo_leaves_no_server(tmp_path: Path, sig: signal.Signals) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("NATS_URL", None)
    demo = subprocess.Popen(
        [sys.executable, "-m", "toolkit.cli", "demo", "--orders", "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert demo.stdout is not None
    while "placing" not in demo.stdout.readline():  # commands are flowing
        assert demo.poll() is None, demo.stderr.read() if demo.stderr else ""
    assert nats_servers_using(tmp_path)
    demo.send_signal(sig)
    demo.wait(30)
    assert demo.returncode != 0
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
    home = ProjectionHome(data, "shipping")
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


def test_partition_workers_from_the_command_line(tmp_path: Path) -> None:
    data = sales_log(tmp_path / "data", orders=20)
    assert (
        toolkit("--data-dir", str(data), "relay", "sales", "--once", tmp=tmp_path).returncode == 0
    )
    for k in ("0", "1"):
        worker = toolkit(
            "--data-dir", str(data), "project", "shipping", "--once",
            "--partition", k, "--partitions", "2", tmp=tmp_path,
        )  # fmt: skip
        assert worker.returncode == 0, worker.stderr
    with ProjectionHome(data, "shipping").reader() as db:
        assert db is not None
        assert len(dump(db)["shipment"]) == 20  # the two halves make the whole
    alone = toolkit("project", "shipping", "--partition", "0", tmp=tmp_path)
    assert alone.returncode == 1
    assert alone.stderr.strip() == "toolkit: error: --partition and --partitions go together"


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
    with ProjectionHome(data, "shipping").writer_lock():  # as a running projector would
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
