"""A projection keeps its promise when its process dies: after SIGKILLs at random points
of a catch-up, the read model equals, row by row, one built without faults."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import sys
from pathlib import Path
from subprocess import PIPE

from nats.aio.client import Client

from projections.billing import Accounts
from tests.conftest import wait_for
from tests.flow import project_all, relay_orders
from toolkit.nats.embedded import EmbeddedServer
from toolkit.readmodels.sqlite import SQLiteHome
from toolkit.readmodels.tables import dump


async def test_projection_killed_again_and_again_ends_equal_to_a_clean_build(
    data_dir: Path, tmp_path: Path, nats_server: EmbeddedServer, nc: Client
) -> None:
    head = await relay_orders(data_dir, nc, 50_000)
    assert head >= 50_000

    rng = random.Random(11)
    command = [sys.executable, "-m", "toolkit", "--data-dir", str(data_dir)]
    command += ["--nats-url", nats_server.url, "project", "billing"]
    home = SQLiteHome(data_dir, "billing")
    checkpoints: list[int] = []
    env = {**os.environ, "TOOLKIT_LEASE_TTL": "1"}

    def committed() -> int:
        current = home.current()
        if current is None:
            return 0
        with contextlib.closing(sqlite3.connect(f"file:{current}?mode=ro", uri=True)) as db:
            (lowest,) = db.execute("SELECT min(sequence) FROM toolkit_checkpoint").fetchone()
        return int(lowest or 0)  # the lowest of its slices

    while len(checkpoints) < 6:
        before = committed()
        # (A killed worker's slices move when its leases expire: shortened to keep this fast.)
        worker = await asyncio.create_subprocess_exec(*command, stderr=PIPE, env=env)
        assert worker.stderr is not None
        await worker.stderr.readline()  # "projecting billing ..." once it is connected
        # A random point in its catch-up, after it has committed something (on a loaded
        # machine a fixed delay may kill it before its first commit every time).
        await wait_for(lambda: committed() > before or committed() == head, within=60)  # noqa: B023
        await asyncio.sleep(rng.uniform(0.0, 0.05))
        worker.send_signal(signal.SIGKILL)
        await worker.wait()
        checkpoints.append(committed())
    finished = await asyncio.create_subprocess_exec(*command, "--once", stderr=PIPE, env=env)
    _, errors = await asyncio.wait_for(finished.communicate(), 120)
    assert finished.returncode == 0, errors.decode()
    assert len([c for c in checkpoints if c < head]) >= 5, checkpoints  # killed mid-way
    assert len({c for c in checkpoints if 0 < c < head}) >= 3, checkpoints  # progress between

    clean = tmp_path / "clean"
    await project_all(Accounts(), clean, nc)
    with home.reader() as faulted, SQLiteHome(clean, "billing").reader() as reference:
        assert faulted is not None and reference is not None
        assert dump(faulted) == dump(reference)
        sliced = faulted.execute("SELECT stream, sequence FROM toolkit_checkpoint").fetchall()
        assert sorted(sliced) == sorted((f"sales#{k}", head) for k in range(64))
    print("checkpoints at the kills:", checkpoints, "of", head)
