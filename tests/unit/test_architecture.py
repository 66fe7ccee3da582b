"""The layout's promises, checked on the source: dependencies point inward, no cycles,
interfaces never import their adapters, and the sides never import the HTTP boundary.

The graph is read from the AST of every module under ``toolkit/``: every import counts,
including those inside functions (a lazy import is still a dependency), except those under
``if TYPE_CHECKING:`` (they never run).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "toolkit"

LAYERS: dict[str, int] = {
    # the kernel: shared by every layer, depends on none
    "toolkit": 0,
    "toolkit._moved": 0,
    "toolkit.errors": 0,
    "toolkit.config": 0,
    "toolkit.backoff": 0,
    "toolkit.locks": 0,
    "toolkit.redaction": 0,
    # the wire contract: no I/O
    "toolkit.wire": 1,
    # adapters to the outside: NATS, read-model databases, event logs
    "toolkit.nats": 2,
    "toolkit.readmodels": 2,
    "toolkit.logs": 2,
    # the two sides
    "toolkit.write": 3,
    "toolkit.read": 3,
    # the composition root's type, then what operators see
    "toolkit.system": 4,
    # policies: a context reacting to foreign streams (both sides)
    "toolkit.react": 4,
    # commands through a queue owned by the context (the write side, on NATS)
    "toolkit.commands": 4,
    "toolkit.ops": 5,
    # the testing kit: both sides and a read model, without NATS
    "toolkit.testing": 5,
    # the boundary
    "toolkit.http": 6,
    "toolkit.webhooks": 6,
    # the command line, and ``python -m toolkit``
    "toolkit.cli": 7,
    "toolkit.__main__": 7,
}
"""A module may import modules of its own layer or a lower one, never a higher one."""

BOUNDARY = ("toolkit.http", "toolkit.webhooks", "toolkit.cli", "toolkit.__main__")
WEB_FRAMEWORKS = ("fastapi", "starlette", "uvicorn", "pydantic")
WEB = ("toolkit.http", "toolkit.webhooks.api", "toolkit.cli")
"""Where a web framework may be imported: the HTTP boundary, the webhooks' API, and the
CLI's commands that serve HTTP (lazily: see the subprocess test below)."""
INTERFACES = {
    "toolkit.readmodels.interface": ("toolkit.readmodels.sqlite", "toolkit.readmodels.postgres"),
    "toolkit.readmodels": ("toolkit.readmodels.sqlite", "toolkit.readmodels.postgres"),
}
"""An interface (or the package that exports it) and the adapters it must never import."""
EXAMPLE = ("contexts", "projections")
"""The example system's packages: in the clone, not in the wheel (generic top-level names
would shadow a user's). Only ``toolkit demo`` imports them, lazily, from its app dir."""


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(module: str, path: Path) -> set[str]:
    """Every module ``module`` imports, toolkit's resolved to the module they name."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules() else base)
        for inner in ast.iter_child_nodes(node):
            visit(inner)

    visit(ast.parse(path.read_text(), str(path)))
    return found


@cache
def graph() -> dict[str, frozenset[str]]:
    return {name: frozenset(_imported(name, path)) for name, path in modules().items()}


def toolkit_edges() -> dict[str, set[str]]:
    return {
        name: {target for target in targets if target in modules() and target != name}
        for name, targets in graph().items()
    }


def layer(module: str) -> int:
    best = max((prefix for prefix in LAYERS if _within(module, prefix)), key=len)
    return LAYERS[best]


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return found


def test_the_graph_sees_the_whole_package() -> None:
    """Guards the checks below against reading nothing: every subpackage is there, and
    every module falls in a layer."""
    names = set(modules())
    for package in ("wire", "write", "read", "readmodels", "logs", "nats", "http", "webhooks"):
        assert f"toolkit.{package}" in names
    assert "toolkit.wire" in toolkit_edges()["toolkit.read.translator"]
    assert "toolkit.read.translator" in toolkit_edges()["toolkit.read.projector"]
    for name in names:
        assert layer(name) >= 0


def test_no_import_cycles() -> None:
    assert cycles(toolkit_edges()) == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_dependencies_point_inward() -> None:
    outward = sorted(
        f"{source} (layer {layer(source)}) imports {target} (layer {layer(target)})"
        for source, targets in toolkit_edges().items()
        for target in targets
        if layer(target) > layer(source)
    )
    assert outward == []


def test_interfaces_never_import_their_adapters() -> None:
    for interface, adapters in INTERFACES.items():
        assert not toolkit_edges()[interface] & set(adapters), interface


def test_nothing_but_the_boundary_imports_it() -> None:
    offending = sorted(
        f"{source} imports {target}"
        for source, targets in graph().items()
        if not source.startswith(BOUNDARY)
        for target in targets
        if target.startswith(BOUNDARY)
    )
    assert offending == []


def test_only_the_web_modules_import_a_web_framework() -> None:
    offending = sorted(
        f"{source} imports {target}"
        for source, targets in graph().items()
        if not any(_within(source, web) for web in WEB)
        for target in targets
        if target.split(".")[0] in WEB_FRAMEWORKS
    )
    assert offending == []


def _eager_imports(path: Path) -> set[str]:
    """Top-level names ``path`` imports outside any function (bar ``if TYPE_CHECKING:``)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
        for inner in ast.iter_child_nodes(node):
            visit(inner)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def test_only_the_demo_imports_the_example_system_and_lazily() -> None:
    """The wheel has no ``contexts`` or ``projections``: a toolkit module importing them
    would fail once installed (or load a user's packages of those names)."""
    importing = sorted(
        source
        for source, targets in graph().items()
        if any(target.split(".")[0] in EXAMPLE for target in targets)
    )
    assert importing == ["toolkit.cli.demo"]
    assert _eager_imports(modules()["toolkit.cli.demo"]).isdisjoint(EXAMPLE)


def test_the_eager_import_finder_sees_module_level_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "import contexts.sales\nif TYPE_CHECKING:\n    import projections\n"
        "def f():\n    import projections.billing\n"
    )
    assert _eager_imports(source) == {"contexts"}


@pytest.mark.parametrize(
    "module", ["toolkit.cli", "toolkit.cli.commands", "toolkit.ops.status", "toolkit.webhooks"]
)
def test_commands_that_serve_no_http_import_no_web_framework(module: str) -> None:
    """What the CLI imports, as Python really imports it (``python -X importtime`` shows the
    same): no FastAPI, Starlette, uvicorn or pydantic."""
    assert sorted(imported_by(module) & set(WEB_FRAMEWORKS)) == []


def imported_by(module: str) -> set[str]:
    """The top-level packages importing ``module`` loads, in a fresh interpreter."""
    loaded = subprocess.run(
        [sys.executable, "-c", f"import sys, {module}; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout.split()
    return {name.split(".")[0] for name in loaded}


def test_the_command_line_parses_before_importing_nats_or_eventsourcing() -> None:
    """``toolkit --help`` and usage errors only build the parser."""
    roots = imported_by("toolkit.cli")
    assert roots.isdisjoint({"nats", "eventsourcing", "rich", "msgspec"}), sorted(roots)
