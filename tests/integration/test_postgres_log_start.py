"""Processes of one PostgreSQL log start at the same moment (standby relays started
together, a deployment's replicas): each creates the log's tables as it starts, and
PostgreSQL refuses concurrent ``CREATE OR REPLACE FUNCTION`` (``tuple concurrently
updated``) and concurrent creation of one type; every one of them must start anyway."""

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
