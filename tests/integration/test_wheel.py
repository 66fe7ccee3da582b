"""The wheel, installed into a fresh virtual environment: it adds ``toolkit`` and its
dist-info to site-packages and nothing else (the example system's ``contexts`` and
``projections`` stay in the clone, so they never shadow a user's packages of those names);
its console script works; and in a user's project with its own ``contexts`` package, that
package is the one ``toolkit --system contexts.system:system`` loads.

The fresh environment gets the dependencies without downloading them: a ``.pth`` file lists
the running environment's site-packages after its own, so its own ``toolkit`` comes first
(checked: ``toolkit.__file__`` is in the fresh environment)."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from toolkit.nats.embedded import EmbeddedServer

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
DIST_INFO = f"{PROJECT['name'].replace('-', '_')}-{PROJECT['version']}.dist-info"

NOT_SOURCES = [
    ".git",
    "__pycache__",
    "*.egg-info",
    "build",
    "dist",
    ".venv",
    ".*_cache",
    ".hypothesis",
    ".toolkit",
]
"""What the build's copy of the clone leaves out: it is not part of the source."""

USER_SYSTEM = '''"""A user's own system, in their own package named ``contexts``."""

from toolkit import BoundedContext, PublishedLanguage, System


class Pantry(BoundedContext):
    name = "pantry"
    published_language = PublishedLanguage("pantry")


system = System(contexts={"pantry": Pantry}, title="My pantry")
'''


@dataclass
class Installed:
    venv: Path
    site_packages: Path
    before: set[str]
    after: set[str]

    def run(
        self, *args: str, cwd: Path, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.venv / "bin" / args[0]), *args[1:]],
            cwd=cwd,
            env={**clean_env(), **(env or {})},
            capture_output=True,
            text=True,
            timeout=30,
        )


def clean_env() -> dict[str, str]:
    """This environment, without what would make the fresh one import from the clone
    (``PYTHONPATH``, set for the suite's CLI processes) or run another system."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "NATS_URL"):
        env.pop(name, None)
    for name in list(env):
        if name.startswith("TOOLKIT_") and name != "TOOLKIT_WEBHOOK_KEYS":
            env.pop(name)
    return env


def running_site_packages() -> list[str]:
    """Where the running environment's distributions are: the fresh one borrows them."""
    paths = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    paths += [sysconfig.get_paths()["platlib"], *sys.path]  # sys.path: those .pth files add
    found = [path for path in paths if Path(path).name in ("site-packages", "dist-packages")]
    return list(dict.fromkeys(path for path in found if Path(path).is_dir()))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources.
    source = tmp / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(*NOT_SOURCES),
    )
    wheels = tmp / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--quiet", "-w", str(wheels), str(source)],
        check=True,
        env=clean_env(),
        timeout=100,
    )
    (wheel,) = wheels.glob("*.whl")

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site_packages = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    before = {path.name for path in site_packages.iterdir()}
    subprocess.run(
        [*pip, "--python", str(python), "install", "--no-deps", "--quiet", str(wheel)],
        check=True,
        env=clean_env(),
        timeout=60,
    )
    after = {path.name for path in site_packages.iterdir()}
    # After the install: pip would see this environment's own jetstream-contexts (CI installs
    # it) through the .pth file, and install nothing.
    (site_packages / "borrowed-dependencies.pth").write_text(
        "\n".join(running_site_packages()) + "\n"
    )
    return Installed(venv, site_packages, before, after)


def test_the_wheel_adds_only_toolkit_to_site_packages(installed: Installed) -> None:
    assert installed.before == set()  # a fresh environment, without pip
    assert installed.after - installed.before == {"toolkit", DIST_INFO}


def test_the_console_script_runs_the_installed_package(
    installed: Installed, tmp_path: Path
) -> None:
    done = installed.run("toolkit", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "usage: toolkit" in done.stdout
    version = installed.run("toolkit", "--version", cwd=tmp_path)
    assert version.stdout.split() == ["toolkit", PROJECT["version"], f"({PROJECT['name']})"]
    where = installed.run("python", "-c", "import toolkit; print(toolkit.__file__)", cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(installed.site_packages), where


@pytest.fixture
def user_project(tmp_path: Path) -> Path:
    """A user's project whose own package is named ``contexts``, like the example's."""
    project = tmp_path / "project"
    (project / "contexts").mkdir(parents=True)
    (project / "contexts" / "__init__.py").write_text("")
    (project / "contexts" / "system.py").write_text(USER_SYSTEM)
    return project


def test_a_user_package_named_contexts_is_the_one_loaded(
    installed: Installed, user_project: Path, nats_server: EmbeddedServer
) -> None:
    done = installed.run(
        "toolkit",
        "--system",
        "contexts.system:system",
        "--data-dir",
        str(user_project / ".data"),
        "status",
        "--json",
        cwd=user_project,
        env={"NATS_URL": nats_server.url},
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert list(report["contexts"]) == ["pantry"], report  # the user's, not the example's sales


def test_the_demo_runs_from_the_clone_root(
    installed: Installed, nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    """The Quickstart with a plain install: the console script finds the example system
    in the current folder, the clone's root (the full demo runs in test_cli.py)."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    done = installed.run(
        "toolkit",
        "demo",
        "--orders",
        "2",
        "--customers",
        "1",
        cwd=ROOT,
        env={"NATS_URL": nats_server.url, "TMPDIR": str(temporary)},
    )
    assert done.returncode == 0, done.stderr
    assert "equal to the live model" in done.stdout
    assert list(temporary.iterdir()) == []  # the demo's folder is gone


def test_the_demo_outside_the_clone_says_where_to_run_it(
    installed: Installed, user_project: Path
) -> None:
    """The example system is in the clone, not in the wheel: one line says so."""
    done = installed.run("toolkit", "demo", cwd=user_project)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert "the demo runs the example system of the project's clone" in lines[0]
    assert "No module named 'contexts.sales'" in lines[0]  # the user's contexts has none
    assert "--app-dir <clone>" in lines[0]
