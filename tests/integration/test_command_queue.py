"""Commands through a queue owned by the context (toolkit.commands, toolkit.http.queued,
``toolkit commands <context>``): accepted with 202 and a status resource, run once by
competing workers whatever is killed, an ``Idempotency-Key`` making a retried request one
command, and a failing command ending ``failed`` rather than retried forever.

The system below is what ``--system tests.integration.test_command_queue:system`` loads:
the example's sales endpoints (synchronous, and queued under ``/sales/commands``), its
workers on a quick queue (a redelivery 1 s after a worker dies), whose process SIGKILLs
itself right after storing the customer that ``DIE_AFTER_STORING`` names.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from eventsourcing.persistence import Recording
from eventsourcing.utils import get_topic

from contexts.sales import Customer, Sales
from contexts.sales.api import router as sales_api
from contexts.sales.queued import PlaceOrder, RegisterCustomer, place_order, register_customer
from tests.conftest import POSTGRES, eventually, postgres, serving
from toolkit.cli import main
from toolkit.commands import CommandQueue, CommandRunner, CommandWorker, QueueClient
from toolkit.commands.outcome import CommandOutcome
from toolkit.config import Settings
from toolkit.http.app import create_app
from toolkit.nats.connection import connect
from toolkit.nats.embedded import EmbeddedServer
from toolkit.system import System

pytestmark = pytest.mark.timeout(60)

DIE_AFTER = "DIE_AFTER_STORING"


class FragileSales(Sales):
    """Sales, killing its process (SIGKILL) right after storing the customer whose name
    ``DIE_AFTER_STORING`` says: after the command's transaction, before its status and
    its acknowledgement."""

    name = "sales"  # eventsourcing names a subclass after itself otherwise

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        victim = os.environ.get(DIE_AFTER)
        if victim:

            def die(recordings: list[Recording[Any]]) -> None:
                if any(getattr(r.domain_event, "name", None) == victim for r in recordings):
                    os.kill(os.getpid(), signal.SIGKILL)

            self.on_saved(die)


class Explode(msgspec.Struct, forbid_unknown_fields=True):
    """A command whose handler always fails (not a refusal): retried, then failed."""


quick = CommandQueue(Sales, ack_wait=1.0, max_deliver=3, retry_delay=0.05)
quick.command(RegisterCustomer)(register_customer)
quick.command(PlaceOrder)(place_order)


@quick.command(Explode)
def explode(command: Explode, sales: Sales) -> None:
    raise RuntimeError("the handler is broken")


class Slow(msgspec.Struct, forbid_unknown_fields=True):
    """A command that takes longer than the queue's ack_wait."""


slow_runs: list[float] = []


@quick.command(Slow)
def slow(command: Slow, sales: Sales) -> None:
    slow_runs.append(time.monotonic())
    time.sleep(quick.ack_wait * 1.3)


system = System(
    contexts={"sales": FragileSales},
    commands={"sales": sales_api},  # the example's: synchronous, and queued under /commands
    command_queues={"sales": quick},  # the same commands, and explode, with quick retries
)


def registered(sales: Sales) -> Counter[str]:
    """How many times each customer name was registered in ``sales``' log."""
    topic = get_topic(Customer.Registered)
    notifications = sales.recorder.select_notifications(1, 100_000, topics=[topic])
    return Counter(sales.mapper.to_domain_event(n).name for n in notifications)  # type: ignore[attr-defined]


def outcomes(sales: Sales) -> Counter[str]:
    """How many outcomes each command id has in ``sales``' log."""
    topic = get_topic(CommandOutcome.Recorded)
    notifications = sales.recorder.select_notifications(1, 100_000, topics=[topic])
    return Counter(sales.mapper.to_domain_event(n).command_id for n in notifications)  # type: ignore[attr-defined]


def customer(name: str, email: str | None = None) -> bytes:
    return msgspec.json.encode({"name": name, "email": email or f"{name}@example.com"})


# -- once, on every log -----------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres", "jetstream"])
def log_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """Sales' log: a SQLite file, a PostgreSQL schema of its own, or a JetStream log."""
    if request.param == "sqlite":
        yield {}
    elif request.param == "postgres":
        schema = f"t_{uuid.uuid4().hex[:12]}"
        with postgres("test", "the postgres log") as admin:
            admin.execute(f"CREATE SCHEMA {schema}")
            try:
                yield {"PERSISTENCE_MODULE": "eventsourcing.postgres", **POSTGRES,
                       "POSTGRES_SCHEMA": schema}  # fmt: skip
            finally:
                admin.execute(f"DROP SCHEMA {schema} CASCADE")
    else:
        server = request.getfixturevalue("nats_server")
        yield {"PERSISTENCE_MODULE": "toolkit.logs.jetstream", "NATS_URL": server.url}


def test_a_command_runs_once_on_every_log(log_env: dict[str, str], data_dir: Path) -> None:
    """Two workers' contexts on one log: a command delivered again, or run by a second
    worker that looked before the first had stored it, is stored once; a refusal is
    recorded too, so it is not run again either."""
    first = Sales(env=dict(log_env), data_dir=data_dir)
    second = Sales(env=dict(log_env), data_dir=data_dir)
    try:
        a, b = CommandRunner(quick, first), CommandRunner(quick, second)
        ann, bob, eve = (str(uuid.uuid4()) for _ in range(3))
        done = a.run(ann, "register-customer", customer("ann"), last_try=False)
        assert done.state == "done" and not done.duplicate
        assert done.consistency_token is not None and done.consistency_token != "sales:0"
        again = b.run(ann, "register-customer", customer("ann"), last_try=False)
        assert (again.state, again.result, again.duplicate) == ("done", done.result, True)
        assert again.consistency_token is None  # the position is not known to a later one

        # b looks before a has stored bob's command, then runs it too: its save is refused
        looks = b.recorded
        looked: list[str] = []

        def too_early(command_id: str) -> CommandOutcome | None:
            looked.append(command_id)
            return None if len(looked) == 1 else looks(command_id)

        b.recorded = too_early  # type: ignore[method-assign]
        assert a.run(bob, "register-customer", customer("bob"), last_try=False).state == "done"
        raced = b.run(bob, "register-customer", customer("bob"), last_try=False)
        assert (raced.state, raced.duplicate) == ("done", True)

        refused = a.run(eve, "register-customer", customer("eve", "nope"), last_try=False)
        assert refused.state == "failed" and refused.problem is not None
        assert refused.problem["status"] == 422 and "email" in refused.problem["detail"]
        assert b.run(eve, "register-customer", customer("eve"), last_try=False).duplicate

        assert registered(first) == {"ann": 1, "bob": 1}
        assert outcomes(first) == {ann: 1, bob: 1, eve: 1}
    finally:
        first.close()
        second.close()


# -- the queue, its statuses and the HTTP boundary ----------------------------------------


@contextlib.asynccontextmanager
async def api(nats_server: EmbeddedServer, data_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(nats_url=nats_server.url, data_dir=data_dir)
    app = create_app(system, settings, relay=False)
    async with serving(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as http:
        yield http


async def final(http: httpx.AsyncClient, location: str) -> dict[str, Any]:
    """The status at ``location`` once it is done or failed."""

    async def probe() -> dict[str, Any] | None:
        answer = await http.get(location)
        assert answer.status_code == 200, answer.text
        status: dict[str, Any] = answer.json()
        return None if status["state"] == "pending" else status

    return await eventually(probe, within=20)


def workers(url: str, data_dir: Path, cwd: Path, **env: str) -> subprocess.Popen[str]:
    """``toolkit commands sales --workers 2`` in a process of its own, once it runs."""
    process = subprocess.Popen(
        [sys.executable, "-m", "toolkit", "--nats-url", url, "--data-dir", str(data_dir),
         "--system", "tests.integration.test_command_queue:system", "commands", "sales",
         "--workers", "2"],
        stderr=subprocess.PIPE, text=True, cwd=cwd, env={**os.environ, **env},
    )  # fmt: skip
    assert process.stderr is not None
    line = process.stderr.readline()
    assert "running commands of sales: 2 worker(s) on stream sales_commands" in line, line
    return process


async def test_queued_commands_run_once_while_a_worker_process_is_killed(
    nats_server: EmbeddedServer, data_dir: Path, tmp_path: Path
) -> None:
    """The issue's test: 40 commands accepted with 202 while two worker processes run;
    one is SIGKILLed between a command's transaction and its status; each command runs
    once, every status ends done or failed, and a retried request with the same
    Idempotency-Key answers with the first one's status and queues nothing."""
    names = [f"c{i:02d}" for i in range(40)]
    invalid = {name for i, name in enumerate(names) if i % 10 == 7}  # refused by sales
    victim = "c05"
    pool = [workers(nats_server.url, data_dir, tmp_path, **{DIE_AFTER: victim}) for _ in "ab"]
    try:
        async with api(nats_server, data_dir) as http:
            accepted: dict[str, httpx.Response] = {}

            async def send(name: str) -> httpx.Response:
                email = "nope" if name in invalid else None
                return await http.post(
                    "/sales/commands/register-customer",
                    content=customer(name, email),
                    headers={"Idempotency-Key": f"key-{name}"},
                )

            for name in names[:20]:
                accepted[name] = await send(name)
            # the worker that took the victim's command dies after storing it
            await eventually(
                lambda: asyncio.sleep(0, [p for p in pool if p.poll() is not None] or None)
            )
            for name in names[20:]:
                accepted[name] = await send(name)

            statuses: dict[str, dict[str, Any]] = {}
            for name, answer in accepted.items():
                assert answer.status_code == 202, answer.text
                assert answer.json()["state"] == "pending"
                assert "idempotent-replayed" not in answer.headers
                statuses[name] = await final(http, answer.headers["location"])

            killed = [p for p in pool if p.poll() is not None]
            assert [p.returncode for p in killed] == [-signal.SIGKILL]
            tokenless = set()
            for name, status in statuses.items():
                if name in invalid:
                    assert status["state"] == "failed", status
                    assert status["problem"]["status"] == 422
                    assert "is not an email address" in status["problem"]["detail"]
                else:
                    assert status["state"] == "done", status
                    assert set(status["result"]) == {"id"}
                    if status["consistency_token"] is None:
                        tokenless.add(name)
            # A status written from the recorded outcome has no token: the victim's, stored
            # by the worker that died before writing it, and at most the one the process's
            # other worker had stored in that moment (it dies with it; --workers 2).
            assert victim in tokenless and len(tokenless) <= 2, tokenless

            nc = await connect(nats_server.url)
            try:
                js = nc.jetstream()
                before = (await js.stream_info("sales_commands")).state
                for name in (victim, names[0], names[7], names[39]):  # done, done, failed, done
                    replay = await send(name)
                    assert replay.status_code == 202
                    assert replay.headers["location"] == accepted[name].headers["location"]
                    assert replay.headers["idempotent-replayed"] == "true"
                    assert replay.json() == statuses[name]
                after = (await js.stream_info("sales_commands")).state
                assert (after.last_seq, after.messages) == (before.last_seq, 0)
            finally:
                await nc.close()

        survivor = next(p for p in pool if p.poll() is None)
        survivor.send_signal(signal.SIGTERM)
        _, err = survivor.communicate(timeout=20)
        assert survivor.returncode == 0, err
        assert "run before (not run again)" in err
    finally:
        for process in pool:
            if process.poll() is None:
                process.kill()
            process.communicate()

    sales = Sales(data_dir=data_dir)
    try:
        assert registered(sales) == {name: 1 for name in names if name not in invalid}
        assert set(outcomes(sales).values()) == {1} and len(outcomes(sales)) == len(names)
    finally:
        sales.close()


async def test_idempotency_keys_bodies_and_unknown_ids(
    nats_server: EmbeddedServer, data_dir: Path
) -> None:
    """No worker runs: what the API answers by itself. Concurrent requests with one key
    queue one command; a malformed key is 400, a key sent again with another body 422,
    an invalid body 422 with nothing queued; an unknown or malformed id is 404."""
    async with api(nats_server, data_dir) as http:
        post = "/sales/commands/register-customer"
        key = {"Idempotency-Key": '"one-key"'}  # a structured-field string: quotes dropped
        answers = await asyncio.gather(
            *(http.post(post, content=customer("ann"), headers=key) for _ in range(8))
        )
        assert {a.status_code for a in answers} == {202}
        assert len({a.headers["location"] for a in answers}) == 1
        assert sorted(a.headers.get("idempotent-replayed", "") for a in answers) == (
            [""] + ["true"] * 7
        )
        location = answers[0].headers["location"]
        assert location.startswith("/sales/commands/")
        pending = await http.get(location)
        assert pending.status_code == 200 and pending.headers["retry-after"] == "1"
        assert pending.json() == answers[0].json()
        assert set(pending.json()) == {"id", "context", "command", "state", "accepted_at"}
        assert pending.json()["state"] == "pending"
        bare = {"Idempotency-Key": "one-key"}
        unquoted = await http.post(post, content=customer("ann"), headers=bare)
        assert unquoted.headers["location"] == location

        other = await http.post(post, content=customer("bob"), headers=key)
        assert other.status_code == 422, other.text
        assert other.headers["content-type"] == "application/problem+json"
        assert "another command or body" in other.json()["detail"]
        for bad in (b"", b"a b", b"x" * 256, "caf\u00e9".encode(), b'"', b"a\x01"):
            bad_key = {b"Idempotency-Key": bad}
            refused = await http.post(post, content=customer("eve"), headers=bad_key)
            assert refused.status_code == 400, (bad, refused.text)
            assert "Idempotency-Key" in refused.json()["detail"]
        for body in (b'{"name": "eve"}', b'{"name": "eve", "email": "e@x.org", "vip": true}',
                     b'{"name": 1, "email": "e@x.org"}', b"not json", b"[]"):  # fmt: skip
            invalid = await http.post(post, content=body)
            assert invalid.status_code == 422, (body, invalid.text)
            assert invalid.headers["content-type"] == "application/problem+json"
        unknown = await http.post("/sales/commands/launch-rockets", content=b"{}")
        assert unknown.status_code in (404, 405)

        for missing in (str(uuid.uuid4()), "nope", "..%2A%3E", "0" * 40):
            gone = await http.get(f"/sales/commands/{missing}")
            assert gone.status_code == 404, (missing, gone.text)
            assert gone.headers["content-type"] == "application/problem+json"

        # the same command, synchronously
        now = await http.post("/sales/customers", json={"name": "cy", "email": "cy@x.org"})
        assert now.status_code == 201 and now.json()["consistency_token"].startswith("sales:")
        paths = (await http.get("/openapi.json")).json()["paths"]
        queued = paths["/sales/commands/register-customer"]["post"]
        schema = queued["requestBody"]["content"]["application/json"]["schema"]
        assert set(schema["properties"]) == {"name", "email"}
        assert "202" in queued["responses"] and "/sales/commands/{command_id}" in paths
        order = paths["/sales/commands/place-order"]["post"]["requestBody"]["content"]
        line = order["application/json"]["schema"]["properties"]["lines"]["items"]
        assert set(line["properties"]) == {"sku", "quantity", "unit_price"}  # nested, inline

    nc = await connect(nats_server.url)
    try:
        state = (await nc.jetstream().stream_info("sales_commands")).state
        assert state.messages == 1  # eight requests with one key, and nothing invalid
    finally:
        await nc.close()


async def test_a_failing_command_ends_failed_and_is_not_retried_forever(
    nats_server: EmbeddedServer, data_dir: Path
) -> None:
    """A refusal fails at once (422, 404 for an unknown aggregate); a handler that keeps
    raising is tried max_deliver times, then failed (500, its exception not shown)."""
    sales = Sales(data_dir=data_dir)
    nc = await connect(nats_server.url)
    stop = asyncio.Event()
    try:
        client = QueueClient(quick, nc)
        await client.ensure(consumer=True)
        worker = CommandWorker(CommandRunner(quick, sales), client.connection, name="w")
        task = asyncio.create_task(worker.work(stop))
        refused, _ = await client.submit("register-customer", customer("eve", "nope"))
        body = msgspec.json.encode({"customer_id": str(uuid.uuid4()), "lines": [
            {"sku": "tea", "quantity": 1, "unit_price": "1.00"}]})  # fmt: skip
        unknown, _ = await client.submit("place-order", body)
        broken, _ = await client.submit("explode", b"{}")

        async def finished(command_id: str) -> Any:
            status = await client.status(command_id)
            return status if status is not None and status.final else None

        refusal = await eventually(lambda: finished(refused.id))
        assert refusal.state == "failed" and refusal.problem["status"] == 422
        missing = await eventually(lambda: finished(unknown.id))
        assert missing.state == "failed" and missing.problem["status"] == 404
        assert "no customer" in missing.problem["detail"]
        failure = await eventually(lambda: finished(broken.id))
        assert failure.state == "failed" and failure.problem["status"] == 500
        assert "broken" not in failure.problem["detail"]
        assert "3 tries" in failure.problem["detail"]
        stop.set()
        stats = await task
        assert (stats.failed, stats.retried, stats.done) == (3, 2, 0)  # explode: 3 tries
        assert outcomes(sales) == {refused.id: 1, unknown.id: 1, broken.id: 1}
        assert registered(sales) == {}
    finally:
        stop.set()
        await nc.close()
        sales.close()


def test_an_unknown_context_s_queue_is_one_line(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--data-dir", str(data_dir), "--system",
                 "tests.integration.test_command_queue:system", "commands", "nowhere"])  # fmt: skip
    assert code == 1
    assert capsys.readouterr().err.strip() == (
        "toolkit: error: no command queue of context 'nowhere' (known: sales)"
    )


async def test_a_command_longer_than_ack_wait_is_not_handed_to_another_worker(
    nats_server: EmbeddedServer, data_dir: Path
) -> None:
    sales = Sales(data_dir=data_dir)
    nc = await connect(nats_server.url)
    stop = asyncio.Event()
    try:
        client = QueueClient(quick, nc)
        await client.ensure(consumer=True)
        runner = CommandRunner(quick, sales)
        pool = [CommandWorker(runner, client.connection, name=f"w{i}") for i in range(2)]
        tasks = [asyncio.create_task(worker.work(stop)) for worker in pool]
        slow_runs.clear()
        queued, _ = await client.submit("slow", b"{}")

        async def finished() -> Any:
            status = await client.status(queued.id)
            return status if status is not None and status.final else None

        assert (await eventually(finished)).state == "done"
        stop.set()
        stats = await asyncio.gather(*tasks)
        assert len(slow_runs) == 1  # not run by the other worker meanwhile
        assert sum(s.done for s in stats) == 1 and sum(s.duplicates for s in stats) == 0
    finally:
        stop.set()
        await nc.close()
        sales.close()
