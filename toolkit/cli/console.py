"""What every command shares: the operator's lines (credentials taken out), the settings
the flags give, a read model's home, and a clean stop on SIGINT and SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Any

from rich.console import Console

from toolkit.config import Settings, read_model_url
from toolkit.nats.embedded import stop_keeping
from toolkit.readmodels import ReadModelHome
from toolkit.readmodels.backends import open_home
from toolkit.redaction import redact_urls

console = Console(stderr=True, highlight=False, soft_wrap=True)  # one message, one line


def say(line: str) -> None:
    """Print one line for the operator, without the credentials of any URL in it: every
    line a command prints goes through here (or through logging, redacted alike)."""
    console.print(redact_urls(line))


def settings_from(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    if args.nats_url:
        settings = replace(settings, nats_url=args.nats_url)
    if args.data_dir:
        settings = replace(settings, data_dir=args.data_dir)
    if args.system:
        settings = replace(settings, system=args.system)
    if args.app_dir:
        settings = replace(settings, app_dir=args.app_dir)
    if args.read_model_url:
        url = read_model_url(args.read_model_url, "--read-model-url")
        settings = replace(settings, read_model_url=url)
    return settings


@contextlib.contextmanager
def read_model_home(settings: Settings, name: str) -> Iterator[ReadModelHome]:
    home = open_home(settings, name)
    try:
        yield home
    finally:
        home.close()


async def until_signalled(run: Callable[[asyncio.Event], Awaitable[Any]]) -> Any:
    """Run with a stop event that SIGINT and SIGTERM set, for a clean shutdown."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stopping() -> None:
        stop_keeping()  # the embedded server, stopped by the same signal, stays stopped
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping)
    try:
        return await run(stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
