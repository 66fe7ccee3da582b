"""The layout section (docs/architecture.md, "The library") is a promise: it names every
subpackage and every module of ``toolkit/``, each in its package's entry, and no module is
over 500 lines unless the section says why."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "toolkit"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
LONGEST = 500


def _library_entries() -> dict[str, str]:
    """The entries of the section "The library", keyed by the package each is about
    (``""`` for the top-level modules, which several entries name)."""
    text = ARCHITECTURE.read_text()
    section = text.split("## The library", 1)[1].split("\n## ", 1)[0]
    entries: dict[str, str] = {}
    for entry in re.split(r"\n(?=- )", section):
        match = re.match(r"- `(\w+)/`", entry)
        key = match.group(1) if match else ""
        entries[key] = entries.get(key, "") + "\n" + entry
    return entries


def _modules() -> dict[str, list[str]]:
    """Every module's name, by the subpackage it is in (``""``: toolkit itself); a
    package nested deeper (logs/jetstream) is named in its parent's entry."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if len(parts) == 1:
            found.setdefault("", []).append(parts[0])
        elif parts[-1] not in ("__init__", "__main__") or len(parts) > 2:
            found.setdefault(parts[0], []).append(parts[-1] if len(parts) == 2 else parts[1])
        else:
            found.setdefault(parts[0], [])
    return found


def test_every_subpackage_and_module_has_its_line() -> None:
    entries = _library_entries()
    missing = [
        f"{package or 'toolkit'}/{module}"
        for package, names in _modules().items()
        for module in [*names, *([package] if package else [])]
        if package not in entries or (module != package and f"`{module}`" not in entries[package])
    ]
    assert not missing, (
        f"docs/architecture.md (The library) does not name: {sorted(set(missing))}: "
        "give each a line in its package's entry"
    )


def test_no_module_is_over_the_limit_unless_the_layout_says_why() -> None:
    said = ARCHITECTURE.read_text()
    long = {
        str(path.relative_to(ROOT)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > LONGEST
    }
    unexplained = [name for name in long if f"`{name}` is over {LONGEST} lines" not in said]
    assert not unexplained, f"modules over {LONGEST} lines, with no reason given: {long}"


def test_the_checks_see_a_missing_line() -> None:
    entries = _library_entries()
    assert "read" in entries and "`projector`" in entries["read"]
    assert "`nonexistent`" not in entries["read"]
    assert "projector" in _modules()["read"] and "jetstream" in _modules()["logs"]
