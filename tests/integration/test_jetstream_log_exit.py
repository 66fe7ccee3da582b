"""A process whose context logs to JetStream exits promptly without ``close()`` (issue 16,
#15: it used to hang about 50 s, eventsourcing's ``Application.__del__`` waiting at
interpreter shutdown for the log's event loop, whose daemon thread no longer ran)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path
from uuid import UUID

import pytest

from contexts.sales import Sales
from contexts.sales.domain import Customer
from toolkit.nats.embedded import EmbeddedServer

SCRIPT = """
import sys
from contexts.sales import Sales
from contexts.sales.domain import Customer
sales = Sales(env={{"PERSISTENCE_MODULE": "toolkit.logs.jetstream", "NATS_URL": sys.argv[1]}},
              data_dir=sys.argv[2])
ann = sales.register_customer("Ann", "ann@example.com")
{extra}
print(ann, flush=True)
"""  # and no sales.close()


@pytest.mark.parametrize(
    "extra",
    [
        "",
        # a live subscription to the log, never stopped
        "subscription = sales.recorder.subscribe(gt=0)\nnext(subscription)",
    ],
    ids=["after-a-save", "with-a-live-subscription"],
)
def test_a_process_that_exits_without_close_exits_at_once(
    nats_server: EmbeddedServer, data_dir: Path, extra: str
) -> None:
    script = textwrap.dedent(SCRIPT).format(extra=extra)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script, nats_server.url, str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert took < 8, f"the process took {took:.1f}s to exit"
    # What it saved before exiting is in the log.
    sales = Sales(env={"PERSISTENCE_MODULE": "toolkit.logs.jetstream", "NATS_URL": nats_server.url})
    try:
        customer: Customer = sales.repository.get(UUID(done.stdout.split()[0]))
        assert customer.name == "Ann"
    finally:
        sales.close()


CHECK_AT_EXIT = """
import atexit
import sys
atexit.register(lambda: print("closed at exit:", sales.factory.datastore._closed, flush=True))
# (registered before the log's module is imported: atexit runs it after the log's own)
from contexts.sales import Sales
sales = Sales(env={"PERSISTENCE_MODULE": "toolkit.logs.jetstream", "NATS_URL": sys.argv[1]},
              data_dir=sys.argv[2])
sales.register_customer("Ann", "ann@example.com")
"""  # and no sales.close()


def test_a_datastore_left_open_is_closed_at_exit(
    nats_server: EmbeddedServer, data_dir: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHECK_AT_EXIT), nats_server.url, str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "closed at exit: True" in done.stdout, done.stdout + done.stderr
