"""``toolkit contracts``: the published language as documents, written to a folder and
checked against it. Needs no NATS: everything comes from the system's classes.

The comparison is :mod:`toolkit.wire.compatibility` (pure); reading and writing the
folder is here. A snapshot folder holds one file per contract version
(``sales.OrderPlaced.v1.json``); other files in it are left alone."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from toolkit.errors import ConfigurationError, ContractError
from toolkit.system import System
from toolkit.wire.compatibility import Break, compare
from toolkit.wire.schemas import (
    SNAPSHOT_FILE,
    contract_schema,
    published,
    schema_text,
    snapshot_file,
)

EXIT_OK, EXIT_BREAKS = 0, 1


def contracts(system: System, args: argparse.Namespace) -> int:
    """Run ``toolkit contracts <action>``; the exit code (1: breaks found or refused)."""
    if args.contracts_command == "write":
        return write(system, args.dir, force=args.force)
    if args.contracts_command == "check":
        return check(system, args.dir)
    raise ConfigurationError(f"unknown action: toolkit contracts {args.contracts_command}")


def current(system: System) -> dict[tuple[str, int], dict[str, Any]]:
    """The schema of each contract version the system publishes, by (name, version)."""
    return {(p.name, p.version): contract_schema(p.contract) for p in published(system)}


def write(system: System, folder: Path, *, force: bool = False) -> int:
    """Write every published version's schema; refused, writing nothing, when one would
    overwrite its file with a break (unless ``force``)."""
    if folder.exists() and not folder.is_dir():
        raise ConfigurationError(f"{folder} is not a folder")
    kept = snapshot(folder) if folder.is_dir() else {}
    schemas = current(system)
    breaks = [
        brk.line(name, version)
        for (name, version), schema in schemas.items()
        if (name, version) in kept
        for brk in compare(kept[name, version], schema)
    ]
    if breaks and not force:
        for line in breaks:
            print(line)
        print(
            f"toolkit: error: refused: {len(breaks)} change(s) would break the consumers of "
            f"versions in {folder}; publish a new version instead (or --force)",
            file=sys.stderr,
        )
        return EXIT_BREAKS
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for (name, version), schema in schemas.items():
        text = schema_text(schema)
        target = folder / snapshot_file(name, version)
        if (name, version) in kept and target.read_text(encoding="utf-8") == text:
            continue
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(target)  # a reader sees the old file or the new, never half
        written += 1
    forced = f", {len(breaks)} break(s) forced" if breaks else ""
    print(f"{written} schema(s) written, {len(schemas) - written} unchanged in {folder}{forced}")
    return EXIT_OK


def check(system: System, folder: Path) -> int:
    """Compare the published versions with the folder's: a line per break (exit 1), a
    note per version on one side only."""
    if not folder.is_dir():
        raise ConfigurationError(f"{folder} is not a folder of contract schemas")
    kept = snapshot(folder)
    schemas = current(system)
    breaks: list[str] = []
    notes: list[str] = []
    for (name, version), schema in schemas.items():
        if (name, version) not in kept:
            notes.append(
                f"{name} v{version}: not in {folder}: run 'toolkit contracts write {folder}'"
            )
            continue
        breaks.extend(b.line(name, version) for b in compare(kept[name, version], schema))
    for name, version in sorted(kept.keys() - schemas.keys()):
        notes.append(f"{name} v{version}: no longer published (kept: old messages have it)")
    for line in [*breaks, *notes]:
        print(line)
    compared = len(schemas.keys() & kept.keys())
    if breaks:
        print(
            f"toolkit: error: {len(breaks)} break(s) in {compared} contract version(s): "
            "publish a new version instead",
            file=sys.stderr,
        )
        return EXIT_BREAKS
    print(f"{compared} contract version(s) checked against {folder}: no breaks")
    return EXIT_OK


def snapshot(folder: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """The schemas a folder holds, by (name, version); a file that cannot be read or is
    no JSON object is an error naming it."""
    found: dict[tuple[str, int], dict[str, Any]] = {}
    try:
        paths = sorted(folder.iterdir())
    except OSError as exc:
        raise ConfigurationError(f"cannot read {folder}: {exc.strerror or exc}") from None
    for path in paths:
        if not (named := SNAPSHOT_FILE.fullmatch(path.name)):
            continue
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ContractError(f"cannot read {path}: {exc.strerror or exc}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ContractError(f"{path} is not JSON: {exc}") from None
        if not isinstance(schema, dict):
            raise ContractError(f"{path} is not a JSON Schema (not an object)")
        found[named["name"], int(named["version"])] = schema
    return found


__all__ = ["Break", "check", "contracts", "write"]
