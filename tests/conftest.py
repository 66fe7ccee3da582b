"""Fixtures: real nats-server processes on free loopback ports, SQLite files in tmp_path.

Every server a test starts is stopped by the fixture; the session ends by checking that no
nats-server child of this process is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import uvicorn
from cryptography.fernet import Fernet
from nats.aio.client import Client

from contexts.sales import Sales
from toolkit.config import Settings
from toolkit.http.protocols import RefusingProtocol
from toolkit.nats.connection import connect
from toolkit.nats.embedded import EmbeddedServer, free_ports

if TYPE_CHECKING:
    import psycopg

T = TypeVar("T")

CLONE = Path(__file__).resolve().parents[1]
# The example system (contexts/, projections/) and tests/ are not in the wheel: this process
# imports them from the clone (pytest's ``pythonpath``), and so do the CLI processes that
# tests start in temporary folders.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CLONE), os.getenv("PYTHONPATH")]))

KINDS = ("unit", "integration", "faults")
"""The folders under tests/, each also a marker (registered in pyproject.toml): ``unit``
needs no nats-server, no database and no network, and runs in seconds; ``integration``
runs real nats-server, SQLite logs and read models, PostgreSQL, uvicorn or the CLI;
``faults`` injects faults into them: killed processes, cluster and disk faults,
reconnects, restarts, lost stream tails."""


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by these markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with the folder it is in, so ``-m unit`` (or ``-m "not faults"``)
    selects by kind, and the tests of ``test_security_*.py`` modules ``security`` too; a
    test outside the three folders is refused, as it would have none."""
    root = Path(__file__).parent
    astray: set[str] = set()
    for item in items:
        parts = item.path.relative_to(root).parts if item.path.is_relative_to(root) else ()
        if len(parts) > 1 and parts[0] in KINDS:
            item.add_marker(parts[0])
            if parts[-1].startswith("test_security_"):  # what an attacker would try
                item.add_marker("security")
        else:
            astray.add(item.nodeid.split("::")[0])
    if astray:
        raise pytest.UsageError(
            f"tests belong in tests/{{{','.join(KINDS)}}}/, not in: {', '.join(sorted(astray))}"
        )
    first = {name: rank for rank, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: first.get(item.path.name, len(first)))  # (stable)


LONGEST_FIRST = (
    "test_cluster_slices.py",
    "test_cli.py",
    "test_docs.py",
    "test_benchmark_suite.py",
    "test_policy_faults.py",
    "test_relay_standby.py",
    "test_relay_faults.py",
    "test_pipeline_states.py",
    "test_cluster_faults.py",
    "test_shared_server.py",
    "test_fuzz.py",
    "test_process_faults.py",  # (its test alone on PostgreSQL waits for the others' tests:
    # here not for test_cluster_slices', a minute and more)
)
"""The files that take longest (``--durations``), run first: the suite's workers
take a file at a time in this order (``--dist loadfile --no-loadscope-reorder``), so a
long file started last no longer keeps one worker busy after the others are done."""


def child_nats_servers(pid: int | None = None) -> list[int]:
    """PIDs of nats-server processes whose parent is ``pid`` (default: this process)."""
    parent = str(pid or os.getpid())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = stat[stat.rindex(")") + 2 :].split()[1]
        if name == "nats-server" and ppid == parent:
            found.append(int(entry.name))
    return found


def nats_servers_using(folder: Path) -> list[int]:
    """PIDs of nats-server processes whose command line mentions ``folder``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "nats-server" in cmdline and str(folder) in cmdline:
            found.append(int(entry.name))
    return found


POSTGRESQL_TURNS = Path("/tmp/toolkit-tests-postgresql.lock")
"""Every test holds this file's lock shared while it runs; a test marked
``postgresql_alone`` (one that restarts the machine's PostgreSQL) holds it exclusively, so
that no test of another xdist worker, or of another run on this machine, has a PostgreSQL
session open while the server restarts under it."""
POSTGRESQL_GATE = Path("/tmp/toolkit-tests-postgresql.gate")
"""Taken exclusively by a test on its way to its turn, and held by a test waiting to be
alone until it is: ``flock`` has no queue, and the shared holders of three workers (and of
other runs) overlapping without a gap kept a test waiting to be alone past its timeout."""


@pytest.fixture(autouse=True)
def postgresql_turn(request: pytest.FixtureRequest) -> Iterator[None]:
    alone = request.node.get_closest_marker("postgresql_alone") is not None
    with POSTGRESQL_GATE.open("a") as gate, POSTGRESQL_TURNS.open("a") as lock:
        fcntl.flock(gate, fcntl.LOCK_EX)
        fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)  # (released on close)
        fcntl.flock(gate, fcntl.LOCK_UN)
        yield


@pytest.fixture(scope="session", autouse=True)
def no_server_left_behind() -> Iterator[None]:
    yield
    left = child_nats_servers()
    assert not left, f"nats-server processes left running: {left}"


WEBHOOK_KEY = Fernet.generate_key().decode()


@pytest.fixture(autouse=True)
def webhook_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """Webhook secrets are sealed with a key from the environment (TOOLKIT_WEBHOOK_KEYS):
    every test has one, in its process and the commands it starts; a test of what
    happens without one deletes it."""
    monkeypatch.setenv("TOOLKIT_WEBHOOK_KEYS", WEBHOOK_KEY)
    return WEBHOOK_KEY


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    with EmbeddedServer(tmp_path / "nats") as server:
        yield server


@pytest.fixture
async def nc(nats_server: EmbeddedServer) -> AsyncIterator[Client]:
    client = await connect(nats_server.url)
    yield client
    await client.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    return folder


POSTGRES = {
    "POSTGRES_HOST": "127.0.0.1",
    "POSTGRES_PORT": "5432",
    "POSTGRES_DBNAME": "test",
    "POSTGRES_USER": "postgres",
    "POSTGRES_PASSWORD": "",
}


def postgres(dbname: str, what: str) -> psycopg.Connection[tuple[Any, ...]]:
    """An autocommit connection to ``dbname`` on the local PostgreSQL server. Without
    one the test is skipped, except under CI=true, where PostgreSQL must be there."""
    import psycopg

    dsn = f"host=127.0.0.1 port=5432 dbname={dbname} user=postgres"
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):  # CI has PostgreSQL: its absence is a failure there
            pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is needed for {what}: {exc}")
        pytest.skip(
            f"no PostgreSQL at 127.0.0.1:5432 (trust auth, database {dbname}): the "
            f"variants with {what} run where there is one, as in CI"
        )


@pytest.fixture(params=["sqlite", "postgres"])
def log_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The environment that selects a context's log: a SQLite file (the default), or a
    fresh schema of its own in the local PostgreSQL server's ``test`` database."""
    if request.param == "sqlite":
        yield {}
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with postgres("test", "the postgres log") as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            yield {
                "PERSISTENCE_MODULE": "eventsourcing.postgres",
                **POSTGRES,
                "POSTGRES_SCHEMA": schema,
            }
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgres"])
def read_models(request: pytest.FixtureRequest, data_dir: Path) -> Iterator[Settings]:
    """Settings that say where projections keep their read models: SQLite files in
    ``data_dir`` (the default), or a fresh database of their own on the local
    PostgreSQL server."""
    if request.param == "sqlite":
        yield Settings(data_dir=data_dir)
        return
    database = f"rm_{uuid.uuid4().hex[:12]}"
    with postgres("postgres", "PostgreSQL read models") as admin:
        admin.execute(f"CREATE DATABASE {database}")
    try:
        url = f"postgresql://postgres@127.0.0.1:5432/{database}"
        yield Settings(data_dir=data_dir, read_model_url=url)
    finally:  # a new connection: a test may have restarted the server meanwhile
        with postgres("postgres", "PostgreSQL read models") as admin:
            admin.execute(f"DROP DATABASE {database} WITH (FORCE)")


BACKENDS = pytest.mark.parametrize(
    ("log_env", "read_models"),
    [("sqlite", "sqlite"), ("postgres", "sqlite"), ("sqlite", "postgres")],
    indirect=True,
)
"""A test of the read side over both logs and both read-model backends, in three runs
rather than four (the two PostgreSQL backends meet in other tests)."""


@pytest.fixture
def sales(data_dir: Path, log_env: dict[str, str]) -> Iterator[Sales]:
    app = Sales(env=log_env, data_dir=data_dir)
    yield app
    app.close()


async def wait_for(condition: object, within: float = 10.0, interval: float = 0.005) -> None:
    """Await until ``condition()`` is true; fail after ``within`` seconds."""
    assert callable(condition)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)


async def eventually(
    probe: Callable[[], Awaitable[T | None]], within: float = 10.0, interval: float = 0.02
) -> T:
    """Await ``probe()`` until it returns something other than None, and return that;
    fail after ``within`` seconds (for what only an await can tell, like an HTTP answer)."""
    deadline = asyncio.get_running_loop().time() + within
    for _ in itertools.count():
        found = await probe()
        if found is not None:
            return found
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(interval)
    raise AssertionError(f"{getattr(probe, '__name__', probe)} gave nothing within {within}s")


def free_port() -> int:
    """A loopback port free right now, for a server a test starts itself."""
    return free_ports(1)[0]


@pytest.fixture
def running() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The toolkit processes a test starts (it appends them): each still running at the
    end is stopped with SIGTERM, and every one is waited for."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in started:
        process.wait(20)


@contextlib.asynccontextmanager
async def serving(app: object) -> AsyncIterator[str]:
    """Run ``app`` in a real uvicorn server on a free loopback port, as ``toolkit serve``
    runs it (its HTTP protocol); yield its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host="127.0.0.1",
        port=port,
        log_level="warning",
        http=RefusingProtocol,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: server.started or task.done())
        if task.done():
            task.result()
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


_FAULT_REPORT: list[tuple[str, str]] = []
Report = Callable[[str], None]


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Report:
    """``report(line)``: what a fault test injected and verified, printed again at the end
    of the run (pytest hides a passing test's own output)."""

    def say(line: str) -> None:
        print(line)
        request.node.user_properties.append((_FAULT_PROPERTY, line))

    return say


_FAULT_PROPERTY = "fault report"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Collect the lines of ``report`` where the summary is written: in the process that
    ran the test, or in the one xdist's workers send their reports to."""
    if report.when == "teardown":
        for name, line in report.user_properties:
            if name == _FAULT_PROPERTY:
                _FAULT_REPORT.append((report.nodeid, str(line)))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FAULT_REPORT:
        return
    terminalreporter.section("faults injected, and what was verified")
    for nodeid, line in _FAULT_REPORT:
        terminalreporter.write_line(f"{nodeid.split('::')[-1]}: {line}")


def create_read_models(data_dir: Path, *projections: Any) -> None:
    """Each projection's (SQLite) read model, as its projector's first start leaves it:
    readiness waits for every read model the API serves (issue 18, case 10)."""
    from toolkit.read.store import ReadModelStore
    from toolkit.readmodels.sqlite import SQLiteHome

    for projection in projections:
        home = SQLiteHome(data_dir, projection.name)
        ReadModelStore(home.live(), projection()).close()
        home.close()
