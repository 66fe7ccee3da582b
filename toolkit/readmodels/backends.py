"""Choosing a read-model backend: the one place that knows both adapters, so the
interface (:mod:`toolkit.readmodels.interface`) never imports them."""

from __future__ import annotations

from pathlib import Path

from toolkit.config import Settings
from toolkit.errors import ConfigurationError
from toolkit.readmodels.interface import Connection, Generation, ReadModelHome


def connect(generation: Generation, *, readonly: bool = False) -> Connection:
    """A connection to ``generation``, for writing unless ``readonly``."""
    if isinstance(generation, Path):
        from toolkit.readmodels.sqlite import connect as connect_file

        return connect_file(generation, readonly=readonly)
    from toolkit.readmodels.postgres import SchemaGeneration

    if not isinstance(generation, SchemaGeneration):
        raise TypeError(f"not a read-model generation: {generation!r}")
    return generation.connect(readonly=readonly)


def open_home(settings: Settings, name: str) -> ReadModelHome:
    """The home of projection ``name`` in the backend ``settings`` choose: PostgreSQL
    with ``read_model_url``, else SQLite files in the data folder."""
    if settings.read_model_url:
        try:
            from toolkit.readmodels.postgres import PostgresHome
        except ImportError as exc:
            raise ConfigurationError(
                f"PostgreSQL read models need psycopg ({exc}): "
                "pip install 'jetstream-contexts[postgres]'"
            ) from None
        return PostgresHome(settings.read_model_url, name)
    from toolkit.readmodels.sqlite import SQLiteHome

    return SQLiteHome(settings.data_dir, name)
