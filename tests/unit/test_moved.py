"""Module paths of toolkit 0.1 keep working for one release: the same module object as
the new path, after a DeprecationWarning that names where it went."""

from __future__ import annotations

import importlib
import sys

import pytest

from toolkit._moved import MOVED


@pytest.mark.parametrize(("old", "new"), sorted(MOVED.items()))
def test_an_old_path_is_the_new_module_with_a_warning(old: str, new: str) -> None:
    sys.modules.pop(old, None)
    try:
        with pytest.warns(DeprecationWarning, match=rf"^{old} moved to {new};"):
            moved = importlib.import_module(old)
        assert moved is importlib.import_module(new)
        assert moved.__spec__ is not None and moved.__spec__.name == new
        assert moved.__name__ == new
    finally:
        sys.modules.pop(old, None)


def test_every_new_path_exists_and_no_old_module_file_is_left() -> None:
    for old, new in MOVED.items():
        assert importlib.util.find_spec(new) is not None, new
        spec = importlib.util.find_spec(old)
        assert spec is not None and spec.origin is None  # only the alias: no file


def test_the_warning_points_at_the_importer() -> None:
    sys.modules.pop("toolkit.store", None)
    try:
        with pytest.warns(DeprecationWarning) as caught:
            import toolkit.store  # type: ignore[import-not-found]  # noqa: F401
        assert caught[0].filename == __file__
    finally:
        sys.modules.pop("toolkit.store", None)


def test_an_old_class_name_still_imports_with_a_warning() -> None:
    from toolkit.readmodels.sqlite import SQLiteHome

    with pytest.warns(DeprecationWarning, match="ProjectionHome is now SQLiteHome"):
        from toolkit.readmodels.sqlite import ProjectionHome
    assert ProjectionHome is SQLiteHome


@pytest.mark.parametrize(
    ("name", "owner"),
    [
        ("dump", "toolkit.readmodels.tables.dump"),
        ("read_dead_letters", "toolkit.readmodels.tables.dead_letters"),
        ("DeadLetter", "toolkit.readmodels.tables.DeadLetter"),
        ("connect", "toolkit.readmodels.sqlite.connect"),
    ],
)
def test_the_stores_old_names_lead_to_their_owners(name: str, owner: str) -> None:
    from toolkit.read import store

    module, _, attribute = owner.rpartition(".")
    with pytest.warns(DeprecationWarning, match=f"toolkit.read.store.{name} is now {owner}"):
        value = getattr(store, name)
    assert value is getattr(importlib.import_module(module), attribute)
    with pytest.raises(AttributeError):
        store.nothing_of_the_kind  # noqa: B018


def test_python_m_toolkit_cli_runs_the_command_as_in_0_1() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "toolkit.cli", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.startswith("usage: toolkit "), done.stderr
