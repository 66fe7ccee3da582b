"""``toolkit contracts``: the published language as documents, written to a folder and
checked against it. Needs no NATS: everything comes from the system's classes.

The comparison is :mod:`toolkit.wire.compatibility` (pure); reading and writing the
folder is here."""

from __future__ import annotations

import argparse

from toolkit.errors import ConfigurationError
from toolkit.system import System

EXIT_OK, EXIT_BREAKS = 0, 1


def contracts(system: System, args: argparse.Namespace) -> int:
    """Run ``toolkit contracts <action>``; the exit code (1: breaks found or refused)."""
    action = args.contracts_command
    raise ConfigurationError(f"toolkit contracts {action}: not implemented yet")
