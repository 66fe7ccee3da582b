"""The benchmarks run at their smallest size, so they cannot rot unnoticed."""

from __future__ import annotations

import os
from pathlib import Path

from benchmarks import catchup, http, log_backends, read_path, relay, replay


async def test_read_path_benchmark_measures_every_reader(tmp_path: Path) -> None:
    rates = await read_path.measure(3000, tmp_path)
    assert list(rates) == list(read_path.READERS)
    assert all(rate > 0 for rate in rates.values())
    table = read_path.report(3000, rates)
    assert table.row_count == len(read_path.READERS)


async def test_relay_benchmark_measures_relay_and_raw_publishers(tmp_path: Path) -> None:
    measured = await relay.measure(300, tmp_path)
    rates = measured.rates
    assert {relay.BASELINE, relay.RELAY, relay.CATCH_UP, relay.BUILD_ONLY} <= set(rates)
    assert all(rate > 0 for rate in rates.values())
    assert measured.published == 310  # ten customers, 300 orders; the notes stay private
    assert relay.report(300, measured).row_count == 8


async def test_catchup_benchmark_measures_every_consumer(tmp_path: Path) -> None:
    rates = await catchup.measure(200, tmp_path)
    assert catchup.BASELINE in rates and "toolkit Projector" in rates
    assert catchup.FASTSTREAM in rates and catchup.EVENTSOURCING in rates
    assert len(rates) == 5 and all(rate > 0 for rate in rates.values())
    assert catchup.report(200, rates).row_count == 5


def test_replay_benchmark_measures_rate_and_peak_memory(tmp_path: Path) -> None:
    results = replay.measure([300, 600], tmp_path)
    assert set(results) == {300, 600}
    assert all(rate > 0 and peak > 10 * 2**20 for rate, peak in results.values())
    assert replay.report(results).row_count == 2


def test_http_benchmark_measures_the_toolkit_and_bare_fastapi(tmp_path: Path) -> None:
    results = http.measure(50, 100, tmp_path, concurrency=4, rounds=1)
    assert set(results) == {http.TOOLKIT, http.BASELINE}
    assert all(rate > 0 and 0 < p50 <= p99 for rate, p50, p99 in results.values())
    assert http.report(100, results).row_count == 2


def test_log_backends_benchmark_measures_each_log(tmp_path: Path) -> None:
    results = log_backends.measure(20, 20, tmp_path)
    assert list(results) == list(log_backends.BACKENDS)
    postgres = results["PostgreSQL"]
    measured = [b for b, rates in results.items() if isinstance(rates, dict)]
    assert {"JetStream", "SQLite"} <= set(measured)
    assert isinstance(postgres, dict) or not os.environ.get("CI"), postgres  # CI has one
    for backend in measured:
        rates = results[backend]
        assert isinstance(rates, dict) and list(rates) == list(log_backends.MEASURES)
        assert all(rate > 0 for rate in rates.values())
    assert log_backends.report(20, 20, results).row_count == len(log_backends.MEASURES)
