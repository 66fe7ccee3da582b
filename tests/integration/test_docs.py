"""The README and the guide are promises: every code block in them runs here, as written.

Each page runs in a temporary folder of its own (its workspace), block after block, the
way a reader would follow it:

- ```` ```python ```` whose first line is ``# file: <path>``: written to that path;
- ```` ```python ```` otherwise: run as a script, which must exit 0;
- ```` ```bash ````: run with ``bash -euo pipefail``, which must exit 0; jobs it leaves in the
  background (``toolkit serve --port 8000 &``) are stopped when the page ends;
- ```` ```json ````: must parse;
- ```` ```ini ```` (a systemd unit): must parse, and its ``ExecStart`` commands as below;
- ```` ```bash ```` right after ``<!-- parsed, not run: <why> -->`` (commands that take
  hours, or need a server the page cannot start): each line's command is parsed by the
  command's own argument parser (``toolkit``, ``python3 -m benchmarks``), which must
  accept it;
- ```` ```text ````: not code (diagrams, sample output), never run.

Any other fence fails. The workspace and the clone are on ``PYTHONPATH`` (the example
system is the default system), the data folder is the workspace's ``.toolkit``, and no
``NATS_URL`` is set, so the toolkit starts its embedded server as it does for a reader.
The only rewrite: port 8000 becomes a free port. The Quickstart's block is the one
exception, checked rather than run: its demo is run by ``test_cli`` and its test
command is what ``.ci/run`` runs.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(
    r"^(<!-- parsed, not run: [^>]*-->\n)?```([^\n`]*)\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE
)
FILE = re.compile(r"#\s*file:\s*(\S+)")
QUICKSTART = (
    "python3 -m pip install -e . && toolkit demo",
    'python3 -m pip install -e ".[dev]" && python3 -m pytest',
)
SHOWN = {README: '"items":[{"book_id":'}
"""What a page's blocks must print: the README's tour ends with a read over HTTP that
shows the book its command added (checked with the title below)."""
README_MAX = 12_500
"""Bytes: the README says what the project is and how to start; the guide holds the rest."""

pytestmark = pytest.mark.timeout(180)


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    code: str
    parsed_only: bool = False

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line} ({self.lang or 'no language'})"


def blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    return [
        Block(
            page,
            text.count("\n", 0, m.start(2)) + 1,
            m.group(2).strip(),
            m.group(3),
            parsed_only=bool(m.group(1)),
        )
        for m in FENCE.finditer(text)
    ]


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_the_readme_is_short_and_links_every_page_of_the_guide() -> None:
    size = len(README.read_bytes())
    assert size <= README_MAX, f"README.md is {size} bytes: move detail into docs/"
    readme = README.read_text(encoding="utf-8")
    unlinked = [p.name for p in PAGES[1:] if f"](docs/{p.name})" not in readme]
    assert PAGES[1:], "docs/ has no pages"
    assert not unlinked, f"docs pages not linked from the README: {unlinked}"


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_links_between_pages_lead_somewhere(page: Path) -> None:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        unknown_anchor = anchor and linked.suffix == ".md" and anchor not in _anchors(linked)
        if not linked.exists() or unknown_anchor:
            broken.append(target)
    assert not broken, f"links in {_name(page)} that lead nowhere: {broken}"


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings."""
    headings = re.findall(r"^#+\s+(.*)$", FENCE.sub("", page.read_text(encoding="utf-8")), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_the_quickstart_is_what_ci_and_the_demo_test_run() -> None:
    first = blocks(README)[0]
    commands = tuple(line.split("#")[0].strip() for line in first.code.splitlines())
    assert commands == QUICKSTART, f"{first}: the Quickstart changed; update this test and CI"
    ci = (ROOT / ".ci" / "run").read_text()
    assert '"$venv/bin/python" -m pip install --quiet ".[dev]"' in ci
    assert ci.rstrip().endswith("python3 -m pytest"), ".ci/run must end with the test command"
    demo_test = (ROOT / "tests" / "integration" / "test_cli.py").read_text()
    assert 'toolkit("demo"' in demo_test


def _to_run(page: Path) -> list[Block]:
    found = blocks(page)
    if page == README:
        return found[1:]  # the Quickstart: test_the_quickstart_is_what_ci_and_the_demo_test_run
    return found


@pytest.mark.parametrize(
    "page", [p for p in PAGES if any(b.lang != "text" for b in _to_run(p))], ids=_name
)
def test_every_code_block_runs_as_written(page: Path, tmp_path: Path) -> None:
    found = _to_run(page)
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    port = free_port()
    with _background_jobs_stopped() as groups:
        printed = "".join(_run(block, workspace, port, groups) for block in found)
    if page in SHOWN:
        assert SHOWN[page] in printed, f"{_name(page)}'s blocks did not print {SHOWN[page]}"
    if page == README:
        read = printed[printed.index(SHOWN[page]) :]
        assert '"title":"Domain-Driven Design"}]' in read.split("\n")[0], read[:300]


def _run(block: Block, workspace: Path, port: int, groups: list[int]) -> str:
    """Runs (or writes, or parses) one block; returns what it printed."""
    if block.lang == "text":
        return ""
    if block.lang == "json":
        try:
            orjson.loads(block.code)
        except orjson.JSONDecodeError as exc:
            pytest.fail(f"{block}: not JSON: {exc}")
        return ""
    if block.lang == "ini":
        unit = configparser.ConfigParser(strict=True, interpolation=None)
        unit.optionxform = str  # type: ignore[assignment,method-assign]
        unit.read_string(block.code)
        for section in unit.values():
            for key, value in section.items():
                assert "#" not in value, f"{block}: systemd has no comments after a value: {key}"
                if key == "ExecStart":
                    _parses(block, value)
        return ""
    if block.lang == "bash" and block.parsed_only:
        for line in block.code.splitlines():
            if line.split("#")[0].strip():
                _parses(block, line.split("#")[0])
        return ""
    if block.lang == "python":
        first = block.code.splitlines()[0] if block.code.strip() else ""
        if named := FILE.fullmatch(first.strip()):
            target = workspace / named.group(1)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.code, encoding="utf-8")
            return ""
        command = [sys.executable, "-c", block.code]
    elif block.lang == "bash":
        assert shutil.which("curl"), "the guide's shell blocks use curl"
        code = block.code.replace("localhost:8000", f"localhost:{port}")
        code = code.replace("--port 8000", f"--port {port}")
        command = ["bash", "-euo", "pipefail", "-c", code]
    else:
        pytest.fail(f"{block}: a fence must be python, bash, json, ini or text")
    said = workspace.parent / f"block-{block.line}.log"
    with said.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=workspace,
            env=_environment(workspace),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its background jobs share its group: stopped later
        )
        groups.append(process.pid)
        try:
            code_ = process.wait(timeout=150)
        except subprocess.TimeoutExpired:
            code_ = None
    output = said.read_text(errors="replace")
    assert code_ == 0, f"{block} exited {code_}:\n{output[-4000:]}"
    return output


def _parses(block: Block, line: str) -> None:
    """``line``'s command is accepted by its own argument parser (nothing runs)."""
    words = shlex.split(line)
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        words.pop(0)  # VAR=value before the command
    parse: argparse.ArgumentParser
    if words and Path(words[0]).name == "toolkit":
        from toolkit.cli.parser import parser as toolkit_parser

        parse, args = toolkit_parser(), words[1:]
    elif words[:3] == ["python3", "-m", "benchmarks"]:
        from benchmarks.suite import parser as benchmarks_parser

        parse, args = benchmarks_parser(), words[3:]
    else:
        pytest.fail(f"{block}: no parser known for {line.strip()!r}")
    try:
        parse.parse_args(args)
    except SystemExit:
        pytest.fail(f"{block}: {line.strip()!r} is refused by its command's parser")


def _environment(workspace: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NATS_", "TOOLKIT_", "PERSISTENCE_", "POSTGRES_"))
    }
    env["TOOLKIT_WEBHOOK_KEYS"] = os.environ.get("TOOLKIT_WEBHOOK_KEYS", "")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{workspace}{os.pathsep}{ROOT}"
    env["TOOLKIT_DATA_DIR"] = str(workspace / ".toolkit")
    return env


@contextlib.contextmanager
def _background_jobs_stopped() -> Iterator[list[int]]:
    """Yields a list of process groups to stop (SIGTERM, then SIGKILL) when the page ends."""
    groups: list[int] = []
    try:
        yield groups
    finally:
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
        for group in groups:
            _wait_gone(group)


def _wait_gone(group: int, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)  # a process group has no handle to wait on
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)


def test_a_command_its_parser_refuses_fails_the_page() -> None:
    block = Block(README, 1, "bash", "", parsed_only=True)
    _parses(block, "TOOLKIT_DATA_DIR=d toolkit status --json")
    _parses(block, "python3 -m benchmarks --only latency catchup")
    for refused in ("toolkit projekt shipping", "python3 -m benchmarks --fast", "make all"):
        with pytest.raises(pytest.fail.Exception):
            _parses(block, refused)
