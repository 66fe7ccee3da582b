"""What ``from toolkit import ...`` promises: every exported name resolves, and importing
the package stays light (its names are imported on first use)."""

from __future__ import annotations

from pathlib import Path

import pytest

import toolkit
from tests.unit.test_architecture import imported_by

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", toolkit.__all__)
def test_every_exported_name_resolves(name: str) -> None:
    assert getattr(toolkit, name) is not None


def test_every_lazy_name_is_exported_and_in_dir() -> None:
    assert set(toolkit._LAZY) <= set(toolkit.__all__)
    assert set(toolkit.__all__) <= set(dir(toolkit))


def test_the_read_models_connection_is_not_nats() -> None:
    from toolkit.nats.connection import Connection as NatsConnection
    from toolkit.readmodels import Connection

    assert toolkit.Connection is NatsConnection
    assert toolkit.ReadModelConnection is Connection


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = toolkit.Nope


def test_importing_toolkit_imports_no_nats_eventsourcing_or_web_framework() -> None:
    roots = imported_by("toolkit")
    heavy = {"nats", "eventsourcing", "fastapi", "starlette", "pydantic", "msgspec"}
    assert roots.isdisjoint(heavy), sorted(roots & heavy)
