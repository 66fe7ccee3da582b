"""An interrupted replay resumes where it stopped, and ends equal to one that was not."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from pathlib import Path
from subprocess import PIPE

import pytest
from nats.aio.client import Client

from benchmarks.relay import fill_log
from contexts.sales import Sales
from projections.billing import Accounts
from tests.conftest import wait_for
from tests.flow import project_all, relay_all
from toolkit.nats.embedded import EmbeddedServer
from toolkit.readmodels.sqlite import SQLiteHome
from toolkit.readmodels.tables import dump


def building_checkpoint(home: SQLiteHome) -> int:
    generation = home.building()
    if generation is None or not generation.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{generation}?mode=ro", uri=True) as db:
            row = db.execute("SELECT max(sequence) FROM toolkit_checkpoint").fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0] or 0)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
async def test_an_interrupted_replay_resumes(
    sig: signal.Signals, data_dir: Path, tmp_path: Path, nats_server: EmbeddedServer, nc: Client
) -> None:
    sales = Sales(data_dir=data_dir)
    try:
        fill_log(sales, 30_000)
        head = await relay_all(sales, nc)
    finally:
        sales.close()
    home = SQLiteHome(data_dir, "billing")
    command = [sys.executable, "-m", "toolkit", "--data-dir", str(data_dir)]
    command += ["--nats-url", nats_server.url, "replay", "billing"]

    replay = await asyncio.create_subprocess_exec(*command, stderr=PIPE, env=dict(os.environ))
    await wait_for(lambda: building_checkpoint(home) > 0, within=60, interval=0.002)
    replay.send_signal(sig)
    _, errors = await replay.communicate()
    stopped_at = building_checkpoint(home)
    assert 0 < stopped_at < head, (stopped_at, head)  # halfway, and kept
    if sig == signal.SIGINT:
        assert replay.returncode == 130
        assert "run the replay again to resume it" in errors.decode()

    again = await asyncio.create_subprocess_exec(*command, stderr=PIPE)
    _, errors = await asyncio.wait_for(again.communicate(), 120)
    assert again.returncode == 0, errors.decode()
    assert f"resumed from sequence {stopped_at}" in errors.decode()
    assert home.building() is None

    clean = tmp_path / "clean"
    await project_all(Accounts(), clean, nc)
    with home.reader() as replayed, SQLiteHome(clean, "billing").reader() as reference:
        assert replayed is not None and reference is not None
        assert dump(replayed) == dump(reference)
        assert replayed.execute("SELECT sequence FROM toolkit_checkpoint").fetchall() == [(head,)]
