"""What is particular to SQLite read models: how their connections are set up. A writer
(the projector's store) gets the page cache, write-ahead log length and syncing that
``TOOLKIT_SQLITE_*`` choose (see :class:`toolkit.config.SQLiteTuning`);
readers, of which the API opens many, keep SQLite's defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from projections.billing import Accounts
from toolkit.config import SQLiteTuning
from toolkit.errors import ConfigurationError
from toolkit.read.store import ReadModelStore
from toolkit.readmodels import Connection
from toolkit.readmodels.sqlite import SQLiteHome, connect

SETTINGS = ("cache_size", "wal_autocheckpoint", "synchronous", "journal_mode")


def settings_of(db: Connection) -> dict[str, object]:
    return {name: db.execute(f"PRAGMA {name}").fetchone()[0] for name in SETTINGS}


def test_a_writer_gets_the_defaults_and_a_reader_sqlites(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("CACHE_MB", "WAL_MB", "SYNCHRONOUS"):
        monkeypatch.delenv(f"TOOLKIT_SQLITE_{name}", raising=False)
    generation = SQLiteHome(data_dir, "billing").live()
    assert isinstance(generation, Path)
    store = ReadModelStore(generation, Accounts())
    try:
        assert settings_of(store.db) == {
            "cache_size": -16 * 1024,  # KiB: 16 MiB
            "wal_autocheckpoint": 64 * 256,  # pages of 4 KiB: 64 MiB
            "synchronous": 1,  # NORMAL
            "journal_mode": "wal",
        }
    finally:
        store.close()
    reader = connect(generation, readonly=True)
    try:
        assert settings_of(reader)["cache_size"] == -2000  # SQLite's own: 2 MB
        assert settings_of(reader)["wal_autocheckpoint"] == 1000  # (a reader never copies)
    finally:
        reader.close()


def test_an_operators_settings_take_effect(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOOLKIT_SQLITE_CACHE_MB", "8")
    monkeypatch.setenv("TOOLKIT_SQLITE_WAL_MB", "16")
    monkeypatch.setenv("TOOLKIT_SQLITE_SYNCHRONOUS", "full")
    store = ReadModelStore(SQLiteHome(data_dir, "billing").live(), Accounts())
    try:
        assert settings_of(store.db) == {
            "cache_size": -8 * 1024,
            "wal_autocheckpoint": 16 * 256,
            "synchronous": 2,  # FULL
            "journal_mode": "wal",
        }
    finally:
        store.close()


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("TOOLKIT_SQLITE_CACHE_MB", "lots", "is not a whole number"),
        ("TOOLKIT_SQLITE_CACHE_MB", "0", "between 1 and"),
        ("TOOLKIT_SQLITE_SYNCHRONOUS", "off", "one of normal, full"),
        ("TOOLKIT_SQLITE_WAL_MB", "-1", "between 1 and"),
    ],
)
def test_a_bad_setting_is_named(name: str, value: str, reason: str) -> None:
    with pytest.raises(ConfigurationError, match=f"{name}=.*{reason}"):
        SQLiteTuning.from_env({name: value})
