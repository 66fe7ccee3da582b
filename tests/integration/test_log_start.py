"""Processes of one log start at the same moment (standby relays started together, a
relay and a policy, a deployment's replicas): each creates the log's tables as it starts,
and PostgreSQL refuses concurrent ``CREATE OR REPLACE FUNCTION`` (``tuple concurrently
updated``) and concurrent creation of one type or table, and on SQLite as on PostgreSQL
the second insert of eventsourcing's tracking migration record fails; every one of them
must start anyway."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from contexts.sales import Sales


@pytest.mark.timeout(60)
@pytest.mark.parametrize("log_env", ["postgres"], indirect=True)
def test_contexts_of_one_postgres_log_start_together(
    log_env: dict[str, str], data_dir: Path
) -> None:
    """Four contexts opened at once, ten times (the first time on a new schema): each
    opens. Before the retry, about a third of them failed."""
    together = threading.Barrier(4)

    def start(_: int) -> None:
        together.wait(10)
        Sales(env=log_env, data_dir=data_dir).close()

    for _ in range(10):
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(start, range(4)))


@pytest.mark.timeout(60)
def test_contexts_of_one_new_sqlite_log_start_together(tmp_path: Path) -> None:
    """Four reacting contexts opened at once on a new SQLite file, ten times: each opens.
    Each found no tracking table and inserted eventsourcing's ``__migration__`` record;
    before the retry, the second to insert it failed (``Failed to record tracking for
    __migration__ 1``), as a relay and a policy started together did."""
    together = threading.Barrier(4)

    def start(folder: Path) -> None:
        together.wait(10)
        Sales(data_dir=folder).close()

    for round_ in range(10):
        folder = tmp_path / f"round-{round_}"
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(start, [folder] * 4))  # (raises what a start raised)
