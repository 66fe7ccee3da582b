"""The relay lock's PostgreSQL session carries TCP keepalives and a user timeout (issue
21): a holder whose server vanished without a FIN notices within seconds, rather than
after the kernel's quarter of an hour of retransmissions."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import psycopg
import pytest

from tests.conftest import postgres
from toolkit.write import relay_lock
from toolkit.write.relay_lock import KEEPALIVE

WANTED = {
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "1",
    "keepalives_count": "3",
    "tcp_user_timeout": "5000",
}


def _datastore(**kwargs: Any) -> Any:
    """What the lock reads of eventsourcing's PostgresDatastore: its pool's kwargs."""
    return SimpleNamespace(pool=SimpleNamespace(kwargs=kwargs))


def test_the_lock_session_is_opened_with_keepalives(monkeypatch: pytest.MonkeyPatch) -> None:
    given: dict[str, Any] = {}
    monkeypatch.setattr(psycopg, "connect", lambda **kwargs: given.update(kwargs))
    relay_lock._connect(_datastore(host="db", dbname="log", row_factory=object), "the test")
    assert {k: str(given[k]) for k in WANTED} == WANTED
    assert given["host"] == "db" and given["dbname"] == "log" and "row_factory" not in given
    assert given["application_name"].startswith("the test, pid ")
    assert KEEPALIVE["tcp_user_timeout"] / 1000 < 10  # seconds, not the kernel's minutes


def test_the_server_session_has_them() -> None:
    postgres("test", "the postgres log").close()  # skipped where there is none
    datastore = _datastore(host="127.0.0.1", port="5432", dbname="test", user="postgres")
    db = relay_lock._connect(datastore, "the test")
    try:
        parameters = db.info.get_parameters()
        assert {k: parameters.get(k) for k in WANTED} == WANTED
    finally:
        db.close()
