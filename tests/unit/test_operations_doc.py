"""The operations page is a promise: its CLI table names every command ``toolkit --help``
lists, and its configuration table every ``TOOLKIT_*`` variable the library reads."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from toolkit.cli.parser import parser

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = ROOT / "docs" / "operations.md"


def _section(title: str) -> str:
    return OPERATIONS.read_text(encoding="utf-8").split(f"## {title}\n", 1)[1].split("\n## ")[0]


def _commands() -> list[str]:
    (commands,) = [a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return list(commands.choices)


def test_the_cli_table_names_every_command() -> None:
    rows = re.findall(r"^\| `toolkit ([a-z-]+)", _section("The CLI"), re.M)
    assert sorted(set(rows)) == sorted(_commands())


def test_the_configuration_table_names_every_variable_the_library_reads() -> None:
    read = {
        name
        for path in (ROOT / "toolkit").rglob("*.py")
        for name in re.findall(r"[\"'](TOOLKIT_[A-Z_]+)[\"']", path.read_text(encoding="utf-8"))
    }
    table = set(re.findall(r"^\| `(TOOLKIT_[A-Z_]+)`", _section("Configuration"), re.M))
    assert read, "no TOOLKIT_ variable found: the test reads the wrong files"
    assert sorted(read - table) == []
