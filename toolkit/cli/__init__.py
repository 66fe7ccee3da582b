"""The ``toolkit`` command. Arguments are parsed before any command's module is imported,
so ``--help`` and usage errors stay fast; commands that serve no HTTP never import FastAPI."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from toolkit.cli.parser import parser


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 success; 1 a toolkit error (one line on stderr says why); 2 bad usage;
    130 interrupted (Ctrl-C)."""
    args = parser().parse_args(argv)
    from toolkit.cli.commands import run

    with contextlib.suppress(BrokenPipeError):
        return run(args)
    return 1  # stdout closed under us (``toolkit status | head``)


__all__ = ["main"]
