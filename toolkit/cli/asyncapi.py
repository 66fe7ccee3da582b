"""``toolkit contracts asyncapi``: the system's AsyncAPI document printed or written to a
file, for a team in another language or a generator, with no API running. Its server is
the NATS URL of the settings, credentials removed. The parser's part is here too, so that
the parser (which imports this module only when built) stays short."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from toolkit.config import Settings
    from toolkit.system import System


def add_action(
    actions: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """The ``asyncapi`` action of ``toolkit contracts``."""
    action = actions.add_parser(
        "asyncapi",
        parents=[common],
        help="print the system's AsyncAPI 3.0.0 document",
        description="Print the AsyncAPI 3.0.0 document of the system's streams (what "
        "'toolkit serve' answers at /asyncapi.json and /asyncapi.yaml): a channel per "
        "context's stream, a message per contract version it publishes (the CloudEvents "
        "envelope, its data the contract's JSON Schema), who sends and who receives. The "
        "server is NATS_URL (--nats-url), its credentials removed. Needs no NATS.",
    )
    action.add_argument("--yaml", action="store_true", help="YAML rather than JSON")
    action.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="write it to FILE, not to stdout"
    )


def asyncapi(system: System, settings: Settings, args: argparse.Namespace) -> int:
    """Print the document (or write it to ``--output``); the exit code."""
    from toolkit.system import title_of
    from toolkit.wire.asyncapi import asyncapi_document, encoded

    document = asyncapi_document(
        system, servers=settings.nats_url, title=title_of(system, settings.system)
    )
    body = encoded(document, yaml=args.yaml)
    if args.output is None:
        sys.stdout.buffer.write(body)
        sys.stdout.flush()
    else:
        args.output.write_bytes(body)
    return 0
