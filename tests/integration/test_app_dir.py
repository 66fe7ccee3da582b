"""A user's system module loads from the current folder, or the one ``--app-dir`` or
``TOOLKIT_APP_DIR`` names, through the ``toolkit`` console script as through
``python -m toolkit`` (before: the script found no module outside ``sys.path``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

SCRIPT = Path(sys.executable).with_name("toolkit")


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    """A user's project: a package ``myshop`` whose system has no context yet."""
    project = tmp_path / "project"
    (project / "myshop").mkdir(parents=True)
    (project / "myshop" / "__init__.py").write_text("")
    (project / "myshop" / "system.py").write_text(
        "from toolkit.system import System\n\nsystem = System(title='My shop')\n"
    )
    return project


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    assert SCRIPT.exists(), f"the console script is installed beside {sys.executable}"
    return subprocess.run(
        [str(SCRIPT), "--data-dir", str(cwd / ".data"), "--system", "myshop.system:system", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


def loaded(done: subprocess.CompletedProcess[str]) -> bool:
    """The user's system loaded: the command got as far as asking it for a context."""
    return done.returncode == 1 and "no context named 'nowhere' (known: none)" in done.stderr


def test_the_console_script_loads_a_system_from_the_current_folder(shop: Path) -> None:
    done = run("relay", "nowhere", cwd=shop)
    assert loaded(done), done.stderr


def test_app_dir_and_its_variable_name_the_folder(shop: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert loaded(run("--app-dir", str(shop), "relay", "nowhere", cwd=elsewhere))
    assert loaded(run("relay", "nowhere", cwd=elsewhere, env={"TOOLKIT_APP_DIR": str(shop)}))


def test_a_system_not_found_says_where_it_looked(tmp_path: Path) -> None:
    done = run("relay", "nowhere", cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert "cannot import system module 'myshop.system'" in lines[0]
    assert f"looked in {tmp_path.resolve()}" in lines[0] and "--app-dir" in lines[0]
