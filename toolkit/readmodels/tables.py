"""The toolkit's own tables in a read model: the one module that knows their SQL.

Every generation holds, beside the projection's tables:

- ``toolkit_checkpoint``: the last stream sequence applied, per checkpoint key;
- ``toolkit_position``: the log position (in ``Nats-Msg-Id``) of the last relayed
  message passed, per checkpoint key, so that events a relay publishes again after the
  stream lost them are not applied twice;
- ``toolkit_meta``: the projection's name and version, why it is failing, what a replay
  recorded (keys and values are text);
- ``toolkit_dead_letter``: messages the projection could not apply, with the reason;
- ``toolkit_parked``: aggregates whose later messages wait behind a dead letter;
- ``toolkit_epoch``: the cut of a stream into slices (see :mod:`toolkit.read.slices`;
  the old partition workers recorded theirs here too, one row a partitioning).

A checkpoint key is the stream's name, with ``#<index>`` for a slice's (stream names
cannot hold ``#``): :func:`checkpoint_key` builds it and :func:`stream_of` parses
it. Writers (the store) call these functions inside their own transaction; readers
(status, HTTP caching, the CLI, replay) call them on any connection, read-only too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson

from toolkit.readmodels.interface import Connection, Dialect, Rows

_SCHEMA = """
CREATE TABLE IF NOT EXISTS toolkit_checkpoint (
    stream TEXT PRIMARY KEY,
    sequence {bigint} NOT NULL
);
CREATE TABLE IF NOT EXISTS toolkit_position (
    stream TEXT PRIMARY KEY,
    position {bigint} NOT NULL
);
CREATE TABLE IF NOT EXISTS toolkit_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS toolkit_dead_letter (
    stream TEXT NOT NULL,
    sequence {bigint} NOT NULL,
    subject TEXT NOT NULL,
    headers TEXT NOT NULL,
    body {blob} NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (stream, sequence)
);
CREATE TABLE IF NOT EXISTS toolkit_epoch (
    stream TEXT NOT NULL,
    from_sequence {bigint} NOT NULL,
    partitions INTEGER NOT NULL,
    PRIMARY KEY (stream, from_sequence)
);
CREATE TABLE IF NOT EXISTS toolkit_parked (
    stream TEXT NOT NULL,
    aggregate TEXT NOT NULL,
    sequence {bigint} NOT NULL,
    PRIMARY KEY (stream, aggregate)
)
"""

PROBE = "SELECT 1 FROM toolkit_checkpoint LIMIT 1"
"""Fails when a generation has no toolkit tables (not created yet, or dropped)."""
PROBED_TABLE = "toolkit_checkpoint"
"""The table :data:`PROBE` reads: a reader holds it from its first statement on."""


class DeadLetter(NamedTuple):
    """A message a projection could not apply (or was parked behind one), and why."""

    stream: str
    sequence: int
    subject: str
    headers: dict[str, str]
    body: bytes
    reason: str


def checkpoint_key(stream: str, index: int | None = None) -> str:
    """Where a checkpoint (and its log position) is kept: the stream's name, with
    ``#<index>`` for a slice."""
    return stream if index is None else f"{stream}#{index}"


def stream_of(key: str) -> str:
    """The stream a checkpoint key is of."""
    return key.partition("#")[0]


def _dialect(db: Connection) -> Dialect:
    return getattr(db, "dialect", Dialect.SQLITE)


def _execute(db: Connection, sql: str, parameters: Any = ()) -> Rows:
    """Run SQL written with ``?`` placeholders on ``db``, in its dialect."""
    return db.execute(_dialect(db).sql(sql), parameters)


# -- the schema -------------------------------------------------------------------------


def create(db: Connection) -> None:
    """Create the toolkit's tables where they are not yet."""
    dialect = _dialect(db)
    for statement in _SCHEMA.format(bigint=dialect.bigint, blob=dialect.blob).split(";"):
        db.execute(statement)


def projection_tables(db: Connection) -> list[str]:
    """The projection's own tables in the generation (the toolkit's left out), by name."""
    rows = db.execute(
        f"SELECT name FROM ({_dialect(db).list_tables}) AS t "
        "WHERE name NOT LIKE 'toolkit_%' ORDER BY name"
    )
    return [row[0] for row in rows]


def dump(db: Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the projection's own tables, sorted: equal dumps mean equal models."""
    return {
        t: sorted(tuple(r) for r in db.execute(f'SELECT * FROM "{t}"'))
        for t in projection_tables(db)
    }


# -- meta -------------------------------------------------------------------------------


def meta(db: Connection) -> dict[str, str]:
    """Every key of ``toolkit_meta`` with its value."""
    return dict(db.execute("SELECT key, value FROM toolkit_meta"))


def read_meta(db: Connection, key: str) -> str | None:
    """A value of ``toolkit_meta``, None when it is not there (or the generation has no
    toolkit tables)."""
    try:
        row = _execute(db, "SELECT value FROM toolkit_meta WHERE key = ?", (key,)).fetchone()
    except db.Error:
        return None
    return None if row is None else str(row[0])


def write_meta(db: Connection, values: Mapping[str, str]) -> None:
    """Set keys of ``toolkit_meta``, in one statement."""
    rows = ", ".join("(?, ?)" for _ in values)
    _execute(
        db,
        f"INSERT INTO toolkit_meta VALUES {rows} "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [item for pair in values.items() for item in pair],
    )


def forget_meta(db: Connection, key: str) -> None:
    _execute(db, "DELETE FROM toolkit_meta WHERE key = ?", (key,))


def introduce(db: Connection, projection: str, version: int) -> None:
    """Record the projection and version the generation is built by, unless already."""
    _execute(
        db,
        "INSERT INTO toolkit_meta VALUES ('projection', ?), ('version', ?) ON CONFLICT DO NOTHING",
        (projection, str(version)),
    )


# -- checkpoints and log positions ------------------------------------------------------


def checkpoints(db: Connection) -> list[tuple[str, int]]:
    """Every checkpoint, by key."""
    return list(db.execute("SELECT stream, sequence FROM toolkit_checkpoint ORDER BY stream"))


def checkpoint(db: Connection, key: str) -> int | None:
    """The checkpoint kept under ``key``, None when there is none."""
    row = _execute(db, "SELECT sequence FROM toolkit_checkpoint WHERE stream = ?", (key,))
    found = row.fetchone()
    return None if found is None else int(found[0])


def checkpoint_of(db: Connection, stream: str) -> int:
    """The sequence up to which ``stream`` is applied: the lowest of its slices' when
    sliced, 0 before the projection has joined it."""
    sequences = [sequence for key, sequence in checkpoints(db) if stream_of(key) == stream]
    return min(sequences, default=0)


def positions(db: Connection) -> dict[str, int]:
    """The log position passed, by checkpoint key."""
    return dict(db.execute("SELECT stream, position FROM toolkit_position"))


def position(db: Connection, key: str) -> int | None:
    row = _execute(db, "SELECT position FROM toolkit_position WHERE stream = ?", (key,))
    found = row.fetchone()
    return None if found is None else int(found[0])


def join(db: Connection, key: str, sequence: int, position: int | None) -> None:
    """Record a first checkpoint (and log position), unless there is one already."""
    _execute(
        db, "INSERT INTO toolkit_checkpoint VALUES (?, ?) ON CONFLICT DO NOTHING", (key, sequence)
    )
    if position is not None:
        _execute(
            db, "INSERT INTO toolkit_position VALUES (?, ?) ON CONFLICT DO NOTHING", (key, position)
        )


def advance(db: Connection, key: str, before: int | None, sequence: int) -> bool:
    """Move a checkpoint to ``sequence`` from ``before`` (None: set it whatever it is);
    False when it is no longer at ``before`` (another writer moved it)."""
    if before is None:
        _execute(
            db,
            "INSERT INTO toolkit_checkpoint VALUES (?, ?) "
            "ON CONFLICT (stream) DO UPDATE SET sequence = excluded.sequence",
            (key, sequence),
        )
        return True
    moved = _execute(
        db,
        "UPDATE toolkit_checkpoint SET sequence = ? WHERE stream = ? AND sequence = ?",
        (sequence, key, before),
    ).rowcount
    return moved == 1


def pass_position(db: Connection, key: str, position: int) -> None:
    """Record the log position of the last message passed."""
    _execute(
        db,
        "INSERT INTO toolkit_position VALUES (?, ?) "
        "ON CONFLICT (stream) DO UPDATE SET position = excluded.position",
        (key, position),
    )


# -- cuts into slices -------------------------------------------------------------------


def epochs(db: Connection, stream: str) -> list[tuple[int, int]]:
    """(first sequence, slices) of each cut of ``stream``, oldest first: a sliced model
    has one (a model the old partition workers kept may have several)."""
    return [
        (int(start), int(count))
        for start, count in _execute(
            db,
            "SELECT from_sequence, partitions FROM toolkit_epoch WHERE stream = ? "
            "ORDER BY from_sequence",
            (stream,),
        )
    ]


def repartition(db: Connection, stream: str, partitions: int, head: int) -> None:
    """Record a cut of ``stream`` into ``partitions`` slices from ``head + 1`` on (or,
    for the first, right after the one worker's checkpoint, which it hands over), unless
    it already is; inside the caller's transaction."""
    recorded = epochs(db, stream)
    if recorded and recorded[-1][1] == partitions:
        return
    if recorded:
        start = max(head + 1, recorded[-1][0] + 1)
    else:
        start = (checkpoint(db, checkpoint_key(stream)) or 0) + 1
    _execute(db, "INSERT INTO toolkit_epoch VALUES (?, ?, ?)", (stream, start, partitions))
    # A slice that has no log position yet starts from the highest one a worker had
    # reached by the cut's start (none is past it yet, or its checkpoint
    # says so): events the relay carries again after a loss, up to it, were applied,
    # whoever owned them.
    for index in range(partitions):
        _execute(
            db,
            "INSERT INTO toolkit_position SELECT ?, max(p.position) "
            "FROM toolkit_position p JOIN toolkit_checkpoint c ON c.stream = "
            "p.stream WHERE (p.stream = ? OR substr(p.stream, 1, length(?) + 1) "
            "= ? || '#') AND c.sequence <= ? HAVING max(p.position) IS NOT NULL "
            "ON CONFLICT DO NOTHING",
            (checkpoint_key(stream, index), stream, stream, stream, start - 1),
        )
    if not recorded:  # the one worker's place is handed over
        for table in ("toolkit_checkpoint", "toolkit_position"):
            _execute(db, f"DELETE FROM {table} WHERE stream = ?", (checkpoint_key(stream),))


# -- dead letters and parked aggregates -------------------------------------------------


def dead_letters(db: Connection) -> list[DeadLetter]:
    """Every dead letter, oldest first."""
    rows = db.execute(
        "SELECT stream, sequence, subject, headers, body, reason FROM toolkit_dead_letter "
        "ORDER BY stream, sequence"
    ).fetchall()
    return [DeadLetter(s, q, subj, orjson.loads(h), bytes(b), r) for s, q, subj, h, b, r in rows]


def count_dead_letters(db: Connection) -> int:
    (count,) = db.execute("SELECT count(*) FROM toolkit_dead_letter").fetchone()
    return int(count)


def dead_letters_ahead(db: Connection) -> set[tuple[str, int]]:
    """(stream, sequence) of the dead letters past their stream's checkpoint: parked
    while their batch was being applied, so that batch skips them when it comes again."""
    return {
        (stream, sequence)
        for stream, sequence in db.execute(
            "SELECT d.stream, d.sequence FROM toolkit_dead_letter d "
            "LEFT JOIN toolkit_checkpoint c ON c.stream = d.stream "
            "WHERE d.sequence > coalesce(c.sequence, 0)"
        )
    }


def add_dead_letter(
    db: Connection,
    stream: str,
    sequence: int,
    subject: str,
    headers: Mapping[str, str],
    body: bytes,
    reason: str,
) -> None:
    """Keep a message as a dead letter (the one at its place replaced)."""
    _execute(
        db,
        "INSERT INTO toolkit_dead_letter VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (stream, sequence) DO UPDATE SET subject = excluded.subject, "
        "headers = excluded.headers, body = excluded.body, reason = excluded.reason",
        (stream, sequence, subject, orjson.dumps(headers).decode(), body, reason),
    )


def remove_dead_letter(db: Connection, stream: str, sequence: int) -> int:
    """Delete a dead letter, and the parking of its aggregate it held; returns how many
    dead letters went."""
    gone = _execute(
        db, "DELETE FROM toolkit_dead_letter WHERE stream = ? AND sequence = ?", (stream, sequence)
    ).rowcount
    _execute(db, "DELETE FROM toolkit_parked WHERE stream = ? AND sequence = ?", (stream, sequence))
    return int(gone)


def parked(db: Connection) -> list[tuple[str, str, int]]:
    """(stream, aggregate, sequence of the dead letter it is parked behind)."""
    return [(s, a, int(q)) for s, a, q in db.execute("SELECT * FROM toolkit_parked")]


def park(db: Connection, stream: str, aggregate: str, sequence: int) -> None:
    """Park an aggregate behind the dead letter at ``sequence`` (unless it already is)."""
    _execute(
        db,
        "INSERT INTO toolkit_parked VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        (stream, aggregate, sequence),
    )
