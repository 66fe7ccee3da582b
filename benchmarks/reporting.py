"""The suite's report: the machine it ran on, each workload's tables as Markdown, PNG
plots (matplotlib), and the targets with their verdicts."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from rich.table import Table

PACKAGES = (
    "nats-py",
    "eventsourcing",
    "fastapi",
    "uvicorn",
    "httptools",
    "faststream",
    "msgspec",
    "orjson",
)


@dataclass
class Target:
    """A goal the issue sets, as measured in this run."""

    what: str
    measured: float
    goal: float
    at_least: bool = True
    """True: met when measured >= goal; False: when measured <= goal."""
    unit: str = ""
    why: str = ""
    """Why it was missed, with this run's figures (only shown when missed)."""

    @property
    def met(self) -> bool:
        return self.measured >= self.goal if self.at_least else self.measured <= self.goal

    def goal_text(self) -> str:
        return f"{'≥' if self.at_least else '≤'} {self._figure(self.goal)}"

    def verdict(self) -> str:
        gap = abs(self.measured - self.goal) / self.goal
        if self.met:
            return f"met, {gap:.0%} to spare"
        return f"missed by {self._figure(abs(self.measured - self.goal))} ({gap:.0%})"

    def _figure(self, value: float) -> str:
        return f"{value:.2f}{self.unit}"


@dataclass
class Section:
    """One workload's part of the report."""

    key: str
    title: str
    intro: str = ""
    tables: list[Table] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    seconds: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)
    """The machine's 1-minute load average when the workload started and ended."""
    error: str | None = None


def describe_machine() -> list[tuple[str, str]]:
    """What the figures were measured on."""
    facts = [
        ("cores", str(os.cpu_count())),
        ("CPU", _cpu_model()),
        ("memory", _memory()),
        ("system", f"{platform.system()} {platform.release()}"),
        ("Python", sys.version.split()[0]),
        ("nats-server", _nats_server_version()),
    ]
    facts += [(name, _version(name)) for name in PACKAGES]
    facts += [("SQLite", sqlite3.sqlite_version), ("PostgreSQL", _postgres_version())]
    return facts


def _commit() -> str:
    """The work tree's commit, and whether the code measured differs from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "toolkit", "contexts", "projections",
             "benchmarks/*.py"],
            cwd=root, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
    except OSError:
        return "unknown"
    return f"{head or 'unknown'}{' with uncommitted changes' if changed else ''}"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def _memory() -> str:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 2**20:.0f} GiB"
    return "unknown"


def _nats_server_version() -> str:
    from toolkit.nats.embedded import find_server_binary

    try:
        out = subprocess.run(
            [find_server_binary(), "--version"], capture_output=True, text=True, timeout=10
        )
    except Exception as exc:  # a missing binary fails the workloads anyway
        return f"unknown ({exc})"
    return out.stdout.strip().removeprefix("nats-server: ") or "unknown"


def _postgres_version() -> str:
    try:
        import psycopg

        dsn = "host=127.0.0.1 port=5432 dbname=test user=postgres"
        with psycopg.connect(dsn, connect_timeout=3) as db:
            row = db.execute("SELECT current_setting('server_version')").fetchone()
    except Exception:
        return "not reachable at 127.0.0.1:5432"
    return f"{row[0] if row else 'unknown'} at 127.0.0.1:5432"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def markdown_table(table: Table) -> str:
    """A rich table (each benchmark's own ``report()``) as a Markdown table."""
    headers = [str(column.header).replace("\n", " ") for column in table.columns]
    columns = [[str(cell) for cell in column.cells] for column in table.columns]
    lines = []
    if table.title:
        lines += [f"**{table.title}**", ""]
    lines.append("| " + " | ".join(_cell(h) for h in headers) + " |")
    lines.append(
        "|" + "|".join("---:" if c.justify == "right" else "---" for c in table.columns) + "|"
    )
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in zip(*columns, strict=True)]
    if table.caption:
        lines += ["", f"*{table.caption}*"]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") or " "


def targets_table(targets: Sequence[Target]) -> Table:
    table = Table(title="targets, each measured in this run")
    for column in ("target", "measured", "goal", "verdict"):
        table.add_column(column, justify="right" if column in ("measured", "goal") else "left")
    for t in targets:
        table.add_row(t.what, t._figure(t.measured), t.goal_text(), t.verdict())
    return table


def write_report(
    out: Path,
    sections: Sequence[Section],
    *,
    command: str,
    size: str,
    started: datetime.datetime,
    seconds: float,
    loads: tuple[str, str],
) -> Path:
    """``out/report.md`` (the plots are already in ``out``)."""
    targets = [t for s in sections for t in s.targets]
    lines = [
        "# Benchmarks: the toolkit beside its peers",
        "",
        f"Written by `{command}` ({size} size) on {started:%Y-%m-%d at %H:%M} UTC at "
        f"commit {_commit()}, in {seconds / 60:.1f} minutes. Every workload ran in this "
        "one invocation, on this one machine, each contender beside its peers; every "
        "figure is given "
        "absolute and as a ratio to its in-run baseline.",
        "",
        "**Figures drift.** The machine has 2 cores and is shared with other engineers "
        "running test suites, so absolute figures move from run to run (by 10-30% here) and "
        "a contender measured during a burst of someone else's work loses more; ratios "
        "between contenders that took turns move much less. Load average (1 / 5 / 15 min) "
        f"at the start: {loads[0]}; at the end: {loads[1]}.",
        "",
        "## The machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in describe_machine()),
        "",
    ]
    if targets:
        lines += ["## Targets", "", markdown_table(targets_table(targets)), ""]
        missed = [t for t in targets if not t.met and t.why]
        if missed:
            lines += ["Where a target is missed, why:", ""]
            lines += [f"- **{t.what}**: {t.why}" for t in missed]
            lines.append("")
    lines += [
        "## Workloads",
        "",
        "With the time each took and the machine's 1-minute load average as it started and "
        "ended (the suite alone keeps it near 1-2 on 2 cores, and the HTTP workload's "
        "server and client processes near 3-4; more is someone else's work):",
        "",
    ]
    lines += [
        f"- [{s.title}](#{_anchor(s.title)}): {s.seconds:.0f} s, load {s.load[0]:.1f} "
        f"-> {s.load[1]:.1f}"
        for s in sections
    ]
    lines.append("")
    for section in sections:
        lines += [f"## {section.title}", ""]
        if section.intro:
            lines += [section.intro, ""]
        if section.error:
            lines += ["**This workload failed:**", "", "```", section.error, "```", ""]
        for table in section.tables:
            lines += [markdown_table(table), ""]
        for plot in section.plots:
            lines += [f"![{section.title}]({plot})", ""]
        lines += [*(f"{note}\n" for note in section.notes)]
    report = out / "report.md"
    report.write_text("\n".join(lines).rstrip() + "\n")
    return report


def _anchor(title: str) -> str:
    kept = "".join(c for c in title.lower() if c.isalnum() or c in " -")
    return kept.replace(" ", "-")


# Plots --------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _wrap(label: str, width: int = 44) -> str:
    return "\n".join(textwrap.wrap(label, width)) or label


def bar_chart(
    path: Path,
    title: str,
    unit: str,
    values: dict[str, float],
    baseline: str,
    *,
    log: bool = False,
) -> str:
    """Horizontal bars, each labelled with its value and its ratio to ``baseline``."""
    plt = _pyplot()
    names = list(values)
    fig, ax = plt.subplots(figsize=(10, 1.0 + 0.75 * len(names)))
    colours = ["#4c72b0" if n.startswith("toolkit") else "#999999" for n in names]
    ax.barh([_wrap(n) for n in names], [values[n] for n in names], color=colours)
    ax.invert_yaxis()
    base = values[baseline]
    for i, name in enumerate(names):
        v = values[name]
        ax.text(v, i, f" {v:,.0f} (ratio {v / base:.2f})", va="center", fontsize=9)
    return _save(fig, ax, path, title, unit, log=log, top=max(values.values()))


def grouped_chart(
    path: Path,
    title: str,
    unit: str,
    groups: dict[str, dict[str, float]],
    *,
    log: bool = False,
) -> str:
    """Horizontal bars: one group per key of ``groups``, one bar per contender in it,
    each labelled with its value."""
    plt = _pyplot()
    series = list(dict.fromkeys(name for bars in groups.values() for name in bars))
    height = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(13, 1.6 + 0.45 * len(series) * len(groups)))
    for j, name in enumerate(series):
        ys = [i + j * height for i in range(len(groups))]
        xs = [bars.get(name, 0.0) for bars in groups.values()]
        ax.barh(ys, xs, height=height, label=_wrap(name, 40))
        for y, x in zip(ys, xs, strict=True):
            if x:
                ax.text(x, y, f" {x:,.0f}", va="center", fontsize=8)
    ax.set_yticks([i + height * (len(series) - 1) / 2 for i in range(len(groups))])
    ax.set_yticklabels(list(groups))
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    top = max((x for bars in groups.values() for x in bars.values()), default=1.0)
    return _save(fig, ax, path, title, unit, log=log, top=top)


def _save(fig: Any, ax: Any, path: Path, title: str, unit: str, *, log: bool, top: float) -> str:
    """Finish a bar chart (its value axis, with room for the labels) and write it."""
    ax.set_xlabel(unit + (" (log scale)" if log else ""))
    if log:
        ax.set_xscale("log")
    ax.set_xlim(right=top * (4 if log else 1.3))
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path.name


def latency_chart(
    path: Path,
    title: str,
    percentiles: dict[str, dict[int, list[float]]],
    goal_ms: float | None,
    *,
    labels: tuple[str, str, str] = ("p50", "p99", "p99.9"),
) -> str:
    """Latency (ms, log scale) against offered rate: one line per path and percentile
    (three a path, named by ``labels``), and the target's line unless ``goal_ms`` is None."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(12, 5.5))
    styles = ("-o", "--s", ":^")
    colours = ("#4c72b0", "#999999", "#55a868")
    for colour, (name, by_rate) in zip(colours, percentiles.items(), strict=False):
        rates = sorted(by_rate)
        for k, (label, style) in enumerate(zip(labels, styles, strict=True)):
            ax.plot(
                rates,
                [by_rate[r][k] for r in rates],
                style,
                color=colour,
                label=f"{name}: {label}",
            )
    if goal_ms is not None:
        ax.axhline(goal_ms, color="#c44e52", linewidth=1)
        ax.text(
            ax.get_xlim()[0],
            goal_ms,
            f" target: p99 < {goal_ms:g} ms",
            color="#c44e52",
            va="bottom",
        )
    ax.set_yscale("log")
    ax.set_xlabel("offered rate (commands or messages a second)")
    ax.set_ylabel("latency, ms (log scale)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def scaling_chart(path: Path, title: str, results: dict[int, tuple[float, int]]) -> str:
    """Replay rate and peak memory against the stream's length."""
    plt = _pyplot()
    sizes = sorted(results)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(sizes, [results[s][0] for s in sizes], "-o", color="#4c72b0")
    left.set_ylabel("events/s")
    left.set_ylim(bottom=0)
    right.plot(sizes, [results[s][1] / 2**20 for s in sizes], "-o", color="#dd8452")
    right.set_ylabel("peak RSS of the replay process, MiB")
    right.set_ylim(bottom=0)
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xlabel("orders in the stream (log scale)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name
