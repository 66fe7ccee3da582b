"""The benchmark suite (``python -m benchmarks``) at its smallest size, so that it cannot
rot: every workload runs, the report and its plots are written, the targets are judged."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from rich.console import Console

from benchmarks import (
    catchup,
    chain,
    http,
    http_commands,
    log_backends,
    policy_slices,
    read_path,
    relay,
    slices,
    suite,
)
from benchmarks.reporting import markdown_table

PLOTS = {"write", "relay", "catchup", "latency", "http", "scaling", "read_path", "startup", "chain"}
PLOTS |= {"slices", "policy_slices", "http_commands"}


@pytest.mark.timeout(300)  # (slices: one SIGKILL at the default lease TTL, some 40 s; 50 s
# quiet in all, over 180 s once beside the suite's heaviest files on 2 cores)
def test_the_suite_runs_every_workload_and_writes_a_report_with_plots(tmp_path: Path) -> None:
    out = tmp_path / "results"
    console = Console(file=io.StringIO(), width=130)
    run = suite.run_suite(suite.SIZES["smallest"], out, size_name="smallest", console=console)
    postgres = catchup.postgres_answers()  # (CI has it; the workloads measure it then)

    assert not run.failed, [s.error for s in run.failed]
    assert [s.key for s in run.sections] == list(suite.WORKLOADS)
    report = (out / "report.md").read_text()
    assert run.report == out / "report.md"
    for section in run.sections:
        assert f"## {section.title}" in report
        assert section.tables or section.key == "log_backends"
    for plot in PLOTS:
        png = out / f"{plot}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot
        assert f"]({plot}.png)" in report
    for fact in ("| cores | ", "| nats-server | v", "| nats-py | ", "| eventsourcing | "):
        assert fact in report
    assert "| fastapi | " in report and "Load average" in report

    targets = {t.what.split(":")[0] for t in run.targets}
    assert targets == {
        "relay / raw publishing",
        "relay catching up from the log / raw publishing",
        "relay with spans on / off (events carrying a trace)",
        "catch-up at 200",
        "end-to-end p99 at 1,000 commands/s",
        "HTTP reads",
        "HTTP commands at concurrency 1 on SQLite",
        "HTTP commands at concurrency 4 on SQLite",
        "toolkit --help / the bare interpreter's start",
        "policy at 300",
        "SIGKILL to the worker's slices moving again (max, default lease TTL)",
        "replay at 600 / at 300",
    } | ({"HTTP commands at concurrency 4 on PostgreSQL (group commit)"} if postgres else set())
    assert len(run.targets) == 15 + postgres
    for target in run.targets:
        assert target.measured > 0 and target.verdict() in report
        assert target.met or target.why in report  # a miss says why, with its figures

    # Each workload measured every contender (one row each, named as the module names it).
    tables = {s.key: [markdown_table(t) for t in s.tables] for s in run.sections}
    rows = {s.key: [t.row_count for t in s.tables] for s in run.sections}
    assert "| SQLite | toolkit context" in tables["write"][0]
    if os.environ.get("CI"):  # CI has a PostgreSQL server
        assert "| PostgreSQL | toolkit context" in tables["write"][0]
    assert rows["relay"] == [10]
    for contender in (relay.BASELINE, relay.RELAY, relay.CATCH_UP, relay.BUILD_ONLY):
        assert contender in tables["relay"][0]
    assert rows["catchup"] == ([7] if os.environ.get("CI") else rows["catchup"])  # with PostgreSQL
    assert rows["catchup"][0] in (5, 7)
    if rows["catchup"] == [7]:
        assert catchup.TOOLKIT_PG in tables["catchup"][0]
    for contender in (catchup.BASELINE, catchup.TOOLKIT, catchup.FASTSTREAM):
        assert contender in tables["catchup"][0]
    assert catchup.EVENTSOURCING in tables["catchup"][0]
    assert rows["http"] == [2] and http.BASELINE in tables["http"][0]
    assert "at concurrency 4" in tables["http"][0]  # the size's, not a fixed figure
    commands = tables["http_commands"][0]  # SQLite and PostgreSQL, one at a time and 4 at once
    for concurrency in (1, 4):
        for contender in (http_commands.TOOLKIT, http_commands.UNRELAYED, http_commands.BASELINE):
            assert f"| SQLite | {concurrency} | {contender} |" in commands
            if os.environ.get("CI"):
                assert f"| PostgreSQL | {concurrency} | {contender} |" in commands
    assert rows["scaling"][0] == len(suite.SIZES["smallest"].replay_sizes)
    assert rows["read_path"] == [len(read_path.READERS)]
    chain_rates = len(suite.SIZES["smallest"].chain_rates)
    assert rows["chain"] == [3 * chain_rates, 12 * chain_rates]  # every order through the chain
    for contender in (chain.TOOLKIT, chain.SERVED, chain.RAW):
        assert contender in tables["chain"][0]
    assert "unfinished" not in tables["chain"][0]
    assert rows["log_backends"] == [len(log_backends.MEASURES)] * 2
    assert rows["slices"] == [2, 1]  # the baseline and 2 workers (the smallest size); one TTL
    assert slices.BASELINE in tables["slices"][0] and "| 2 x toolkit project" in tables["slices"][0]
    for table in tables["slices"]:  # every model equal to the baseline's or a clean build
        assert "| NO" not in table and "| yes" in table
    assert rows["policy_slices"] == [2]  # the whole policy and 2 workers of its slices
    assert policy_slices.BASELINE in tables["policy_slices"][0]
    assert "| 2 x toolkit react ship-orders" in tables["policy_slices"][0]
    assert "| NO" not in tables["policy_slices"][0]  # a shipment an order, once
    for backend in ("JetStream", "SQLite", *(["PostgreSQL"] if os.environ.get("CI") else [])):
        assert backend in tables["log_backends"][0]


@pytest.mark.timeout(60)
def test_the_command_runs_one_workload_into_the_folder_it_is_given(tmp_path: Path) -> None:
    status = suite.main(["--size", "smallest", "--only", "relay", "--out", str(tmp_path)])
    assert status == 0
    report = (tmp_path / "report.md").read_text()
    assert "## Relay: the log onto JetStream" in report and "## Catch-up" not in report
    assert (tmp_path / "relay.png").exists() and not (tmp_path / "catchup.png").exists()
