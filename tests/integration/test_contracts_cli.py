"""``toolkit contracts write`` and ``check``: the snapshot of the example system committed
in contexts/contracts is what its code publishes (a change that breaks a contract fails
here, as in CI), breaks are named and refused, and a bad folder is one line, no traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from contexts.system import system
from toolkit.cli import main
from toolkit.wire.schemas import contract_schema, published, schema_text

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = ROOT / "contexts" / "contracts"
QUANTITY = "sales.OrderPlaced v1: field 'lines[].quantity' retyped (string -> integer): "

pytestmark = pytest.mark.timeout(60)


def contracts(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["contracts", *args])
    said = capsys.readouterr()
    return code, said.out, said.err


def test_the_committed_snapshot_is_what_the_example_publishes() -> None:
    """The check CI runs: a contract of the example changed incompatibly fails it."""
    done = subprocess.run(
        [sys.executable, "-m", "toolkit", "contracts", "check", str(SNAPSHOT)],
        capture_output=True, text=True, cwd=ROOT, timeout=50,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].startswith("10 contract version(s) checked")
    assert "not in" not in done.stdout, "a published version missing: run write"


def test_write_names_sorts_and_ends_each_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "new" / "contracts"
    assert contracts(capsys, "write", str(folder))[0] == 0
    expected = {f"{p.name}.v{p.version}.json": p.contract for p in published(system)}
    assert sorted(p.name for p in folder.iterdir()) == sorted(expected)
    for name, cls in expected.items():
        text = (folder / name).read_text(encoding="utf-8")
        assert text == schema_text(contract_schema(cls)) and text.endswith("}\n")
        assert list(json.loads(text)) == sorted(json.loads(text))
    assert (folder / "sales.OrderPlaced.v1.json").read_bytes() == (
        SNAPSHOT / "sales.OrderPlaced.v1.json"
    ).read_bytes()
    code, out, _ = contracts(capsys, "write", str(folder))
    assert code == 0 and out.startswith("0 schema(s) written, 10 unchanged")


def _retyped_snapshot(tmp_path: Path) -> Path:
    """A copy of the snapshot in which OrderPlaced's quantity was a string: the code's
    integer is a break of v1."""
    folder = tmp_path / "contracts"
    shutil.copytree(SNAPSHOT, folder)
    placed = folder / "sales.OrderPlaced.v1.json"
    schema = json.loads(placed.read_text())
    schema["$defs"]["OrderLine"]["properties"]["quantity"] = {"type": "string"}
    placed.write_text(schema_text(schema))
    return folder


def test_check_names_each_break_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _retyped_snapshot(tmp_path)
    code, out, err = contracts(capsys, "check", str(folder))
    assert code == 1
    assert out.splitlines() == [QUANTITY + "consumers of v1 read string"]
    assert err.strip() == (
        "toolkit: error: 1 break(s) in 10 contract version(s): publish a new version instead"
    )


def test_write_refuses_a_break_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _retyped_snapshot(tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    code, out, err = contracts(capsys, "write", str(folder))
    assert code == 1 and out.startswith(QUANTITY) and "(or --force)" in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before, "refused: nothing written"
    code, out, _ = contracts(capsys, "write", str(folder), "--force")
    assert code == 0 and "1 schema(s) written" in out and "1 break(s) forced" in out
    assert contracts(capsys, "check", str(folder))[0] == 0


def test_versions_on_one_side_only_pass_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "contracts"
    shutil.copytree(SNAPSHOT, folder)
    shutil.copy(folder / "sales.OrderPlaced.v1.json", folder / "sales.OrderPlaced.v0007.json")
    shutil.copy(folder / "sales.OrderPlaced.v1.json", folder / "sales.OrderPlaced.v7.json")
    (folder / "billing.InvoicePaid.v1.json").unlink()
    (folder / "README.md").write_text("not a schema: left alone\n")
    code, out, _ = contracts(capsys, "check", str(folder))
    assert code == 0, out
    assert f"billing.InvoicePaid v1: not in {folder}: run 'toolkit contracts write {folder}'" in out
    assert "sales.OrderPlaced v7: no longer published (kept: old messages have it)" in out
    assert out.splitlines()[-1].startswith("9 contract version(s) checked")
    assert contracts(capsys, "write", str(folder))[0] == 0
    assert (folder / "sales.OrderPlaced.v7.json").exists(), "an old version's file is kept"
    assert (folder / "billing.InvoicePaid.v1.json").exists()


def test_the_system_option_chooses_whose_contracts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--system", "tests.systems:shipping_v2", "contracts", "check", str(SNAPSHOT)])
    out = capsys.readouterr().out
    assert code == 0
    assert "billing.InvoicePaid v1: no longer published" in out  # only sales is in it
    assert out.splitlines()[-1].startswith("6 contract version(s) checked")


@pytest.mark.parametrize(
    ("setup", "said"),
    [
        ("missing", "is not a folder of contract schemas"),
        ("file", "is not a folder of contract schemas"),
        ("not json", "sales.OrderPlaced.v1.json is not JSON: "),
        ("not an object", "sales.OrderPlaced.v1.json is not a JSON Schema (not an object)"),
        ("not utf-8", "sales.OrderPlaced.v1.json is not JSON: "),
    ],
)
def test_a_bad_folder_is_one_line(
    setup: str, said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "contracts"
    placed = folder / "sales.OrderPlaced.v1.json"
    if setup == "file":
        folder.write_text("{}")
    elif setup != "missing":
        folder.mkdir()
        contents = {"not json": b"{", "not an object": b"[]", "not utf-8": b"\xff\xfe{"}
        placed.write_bytes(contents[setup])
    for action in ("check", "write"):
        code, out, err = contracts(capsys, action, str(folder))
        if action == "write" and setup == "missing":
            assert code == 0  # write makes the folder
            continue
        assert code == 1, (action, out, err)
        assert err.count("\n") == 1 and err.startswith("toolkit: error: "), err
        if not (action == "write" and setup == "file"):
            assert said in err, err
        assert "Traceback" not in out + err
