"""``pip install -e .`` with no extras is enough for ``toolkit demo``: the package, the
example system it runs and the command line import no distribution that only ``.[dev]``
brings (pytest, mypy, matplotlib, faststream...). Checked in a process that refuses those
modules, as if they were not installed; ``tests/integration/test_cli.py`` runs the demo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]

DEV_ONLY = (
    "pytest",
    "_pytest",
    "hypothesis",
    "mypy",
    "matplotlib",
    "faststream",
    "psycopg",
    "psycopg_pool",
    "aiohttp",
    "ruff",
    "Crypto",
)
"""Top-level modules of the distributions only ``.[dev]`` installs (``Crypto``:
pycryptodome; ``psycopg``: also the ``postgres`` extra, whose adapters alone need it)."""

POSTGRES_ADAPTERS = ("toolkit.logs.postgres", "toolkit.readmodels.postgres")

SCRIPT = """
import contextlib, importlib, importlib.abc, io, pkgutil, sys
from pathlib import Path

DEV_ONLY, POSTGRES_ADAPTERS = set(sys.argv[1].split(",")), sys.argv[2].split(",")
clone = sys.argv[3]


class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in DEV_ONLY:
            raise ModuleNotFoundError(f"No module named {name!r} (dev-only)", name=name)
        return None


sys.meta_path.insert(0, NotInstalled())
sys.path.insert(0, clone)  # the clone's toolkit, as pytest's ``pythonpath`` gives the suite

import toolkit
from toolkit.cli import main
from toolkit.cli.demo import example

Sales, system = example(Path(clone))  # as ``toolkit demo --app-dir <clone>`` imports it
import contexts, projections

for package in (toolkit, contexts, projections):
    assert Path(package.__file__).is_relative_to(clone), package.__file__
refused = []
for package in (toolkit, contexts, projections):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if module.name.endswith("__main__"):
            continue  # runs the command line
        try:
            importlib.import_module(module.name)
        except ModuleNotFoundError as exc:
            allowed = module.name in POSTGRES_ADAPTERS and exc.name in {"psycopg", "psycopg_pool"}
            if exc.name not in DEV_ONLY or not allowed:
                refused.append(f"{module.name}: {exc}")
for argv in (["--help"], ["demo", "--help"]):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            main(argv)
        except SystemExit as exc:
            assert exc.code == 0, (argv, exc.code)
    assert "usage: toolkit" in out.getvalue(), argv
refused += [f"imported: {name}" for name in sorted(set(sys.modules) & DEV_ONLY)]
print("\\n".join(refused) or "ok")
"""


def test_the_demo_and_the_package_need_no_dev_only_distribution(tmp_path: Path) -> None:
    """``-I``: no current folder, no ``PYTHONPATH``, no user site: the clone and the
    environment's site-packages alone."""
    done = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            SCRIPT,
            ",".join(DEV_ONLY),
            ",".join(POSTGRES_ADAPTERS),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok"], done.stdout
