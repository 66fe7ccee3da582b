"""Read-model backends: the interface projections and the HTTP boundary use, and its
adapters (SQLite files, PostgreSQL schemas) beside it. This package exports only the
interface; :mod:`toolkit.readmodels.backends` picks an adapter,
:mod:`toolkit.readmodels.tables` knows the SQL of the toolkit's own tables in every
read model, and :mod:`toolkit.readmodels.faults` which database errors are the
infrastructure's."""

from toolkit.readmodels.interface import (
    Connection,
    Dialect,
    Generation,
    ReadModelHome,
    Rows,
    insert_rows,
)

__all__ = ["Connection", "Dialect", "Generation", "ReadModelHome", "Rows", "insert_rows"]
