"""HTTP caching of read models: an entity tag from the model's state.

A read model changes only when its checkpoints move (or a replay switches generations),
so the generation and the checkpoints name its state: any response computed from the
same state is the same, and a client revalidating with ``If-None-Match`` gets 304
without the endpoint running. The tag is weak (``W/``): it promises the same meaning,
not the same bytes under every content coding.
"""

from __future__ import annotations

import hashlib

from toolkit.readmodels.tables import checkpoint_of as checkpoint_of
from toolkit.readmodels.tables import checkpoints as checkpoints


def entity_tag(generation: str, state: list[tuple[str, int]]) -> str:
    digest = hashlib.blake2b(repr(state).encode(), digest_size=8).hexdigest()
    return f'W/"{generation}-{digest}"'
