"""The benchmark report's pieces: a target's verdict and a table as Markdown (the suite
itself runs in tests/integration/test_benchmark_suite.py)."""

from __future__ import annotations

import pytest
from rich.table import Table

from benchmarks.reporting import Target, markdown_table


@pytest.mark.timeout(10)
def test_a_target_says_whether_it_was_met_and_by_how_much() -> None:
    assert Target("ratio", 0.72, 0.6).verdict() == "met, 20% to spare"
    assert Target("ratio", 0.45, 0.6).verdict() == "missed by 0.15 (25%)"
    slow = Target("p99", 30.0, 20.0, at_least=False, unit=" ms")
    assert not slow.met and slow.verdict() == "missed by 10.00 ms (50%)"
    assert slow.goal_text() == "≤ 20.00 ms"
    assert Target("p99", 20.0, 20.0, at_least=False).met  # at most: the goal itself meets it


@pytest.mark.timeout(10)
def test_a_table_becomes_markdown_with_its_alignment_and_caption() -> None:
    table = Table(title="t")
    table.add_column("name")
    table.add_column("rate", justify="right")
    table.add_row("a|b", "1,000")
    table.caption = "2 cores"
    assert markdown_table(table).splitlines() == [
        "**t**",
        "",
        "| name | rate |",
        "|---|---:|",
        "| a\\|b | 1,000 |",
        "",
        "*2 cores*",
    ]
