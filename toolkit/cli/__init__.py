"""The ``toolkit`` command. Commands that serve no HTTP never import FastAPI."""

from toolkit.cli.commands import main

__all__ = ["main"]
