"""HTTP caching of read models: an entity tag from the model's state.

A read model changes only when its checkpoints move (or a replay switches generations),
so the generation and the checkpoints name its state: any response computed from the
same state is the same, and a client revalidating with ``If-None-Match`` gets 304
without the endpoint running. The tag is weak (``W/``): it promises the same meaning,
not the same bytes under every content coding.
"""

from __future__ import annotations

import hashlib

from toolkit.readmodels import Connection


def checkpoints(db: Connection) -> list[tuple[str, int]]:
    return list(db.execute("SELECT stream, sequence FROM toolkit_checkpoint ORDER BY stream"))


def checkpoint_of(db: Connection, stream: str) -> int:
    """The sequence up to which ``stream`` is applied: the lowest of its partitions'
    (keys ``stream#k``) when partitioned, 0 before the projection has joined it."""
    sequences = [
        sequence
        for key, sequence in checkpoints(db)
        if key == stream or key.partition("#")[0] == stream
    ]
    return min(sequences, default=0)


def entity_tag(generation: str, state: list[tuple[str, int]]) -> str:
    digest = hashlib.blake2b(repr(state).encode(), digest_size=8).hexdigest()
    return f'W/"{generation}-{digest}"'


def matches(if_none_match: str | None, tag: str) -> bool:
    """Weak comparison (RFC 9110 13.1.2), as ``If-None-Match`` uses."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    opaque = tag.removeprefix("W/")
    return any(
        candidate.strip().removeprefix("W/") == opaque for candidate in if_none_match.split(",")
    )
