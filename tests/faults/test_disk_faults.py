"""A read model's disk fills up under a projection: it says so, blames no message, and
goes on by itself once there is room again; the model ends equal to a clean build."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from projections.billing import Accounts
from tests.conftest import Report, wait_for
from tests.flow import project_all, relay_orders
from toolkit.read.projector import Projector
from toolkit.read.store import ReadModelStore
from toolkit.readmodels.sqlite import SQLiteHome
from toolkit.readmodels.tables import dump

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs: a disk that fills up (mounting needs root, as in CI here)."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs for the disk-full test: {mounted.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Fill the disk to the last byte; the filler is returned to be removed later."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (b"\0" * 65536, b"\0"):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, chunk)
    finally:
        os.close(fd)
    return filler


async def test_a_full_disk_stops_a_projection_until_there_is_room_again(
    report: Report,
    data_dir: Path,
    tmp_path: Path,
    nc: Client,
    small_disk: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    head = await relay_orders(data_dir, nc, 6000)
    home = SQLiteHome(small_disk, "billing")
    store = ReadModelStore(home.live(), Accounts())
    projector = Projector(Accounts(), store, nc, batch_size=100, transaction_size=200)
    stop = asyncio.Event()
    projecting = asyncio.create_task(projector.run(stop))
    try:
        await wait_for(lambda: store.checkpoint("sales") >= 500)
        filler = fill(small_disk)
        at = store.checkpoint("sales")
        report(f"injected: the read model's disk filled at checkpoint {at:,} of {head:,}")
        await wait_for(lambda: projector.stats.retries >= 2, within=60)
        stuck = store.checkpoint("sales")
        assert stuck < head
        said = [r.getMessage() for r in caplog.records if "disk is full" in r.getMessage()]
        assert said, "the projector did not say why it stopped"
        filler.unlink()
        report(f"then freed the disk with the projector stuck at {stuck:,}: {said[0]}")
        await wait_for(lambda: store.checkpoint("sales") == head, within=60)
        assert projector.stats.parked == 0 and not store.dead_letters()
    finally:
        stop.set()
        await projecting
    faulted = dump(store.db)
    store.close()
    clean = await project_all(Accounts(), tmp_path / "clean", nc)
    assert clean.applied >= 1
    with SQLiteHome(tmp_path / "clean", "billing").reader() as reference:
        assert reference is not None
        assert faulted == dump(reference)
    report(f"verified: went on alone; {head:,} applied once, 0 dead letters, as a clean build")
