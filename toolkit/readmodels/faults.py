"""Which database errors are the infrastructure's rather than the data's.

A write a read model's database refuses because of where it lives (a full disk, an I/O
error, a lost connection, a database busy or read-only) is no message's fault: the batch
waits and is tried again. Any other error came from what a message asked to write."""

from __future__ import annotations

_SQLITE_INFRASTRUCTURE = {5, 6, 7, 8, 10, 13, 14, 15}
"""SQLite's primary result codes BUSY, LOCKED, NOMEM, READONLY, IOERR, FULL, CANTOPEN and
PROTOCOL."""
_POSTGRES_INFRASTRUCTURE = ("08", "53", "57", "58")
"""SQLSTATE classes: connection exception, insufficient resources (disk full), operator
intervention, system error."""


def is_infrastructure_error(exc: BaseException) -> bool:
    """Whether a database error (``sqlite3`` or ``psycopg``) comes from where the read
    model lives rather than from what a message asked to write."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _SQLITE_INFRASTRUCTURE
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate[:2] in _POSTGRES_INFRASTRUCTURE
