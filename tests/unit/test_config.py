from __future__ import annotations

from pathlib import Path

import pytest
from nats.js.api import StorageType

from toolkit import ConfigurationError, Settings, StreamSpec


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.nats_url is None and settings.data_dir == Path(".toolkit")
    spec = StreamSpec.from_settings("sales", settings)
    assert (spec.replicas, spec.storage, spec.duplicate_window) == (1, StorageType.FILE, 3600.0)


def test_stream_settings_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "TOOLKIT_STREAM_REPLICAS": "3",
            "TOOLKIT_STREAM_STORAGE": "memory",
            "TOOLKIT_DUPLICATE_WINDOW": "86400",
            "NATS_URL": "nats://a:4222,nats://b:4222",
        }
    )
    spec = StreamSpec.from_settings("sales", settings)
    assert (spec.replicas, spec.storage, spec.duplicate_window) == (3, StorageType.MEMORY, 86400)
    assert spec.config().num_replicas == 3


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("TOOLKIT_STREAM_REPLICAS", "three", "is not a whole number"),
        ("TOOLKIT_STREAM_REPLICAS", "0", "between 1 and 5"),
        ("TOOLKIT_STREAM_STORAGE", "disk", "one of file, memory"),
        ("TOOLKIT_DUPLICATE_WINDOW", "-5", "between 1 and 604800"),
    ],
)
def test_bad_settings_are_named_in_the_error(name: str, value: str, reason: str) -> None:
    with pytest.raises(ConfigurationError, match=f"{name}={value!r} .*{reason}"):
        Settings.from_env({name: value})


def test_the_read_model_url_is_checked() -> None:
    settings = Settings.from_env({"TOOLKIT_READ_MODEL_URL": "postgresql://h/db"})
    assert settings.read_model_url == "postgresql://h/db"
    assert Settings.from_env({}).read_model_url is None
    with pytest.raises(ConfigurationError, match="must be a postgresql:// URL"):
        Settings.from_env({"TOOLKIT_READ_MODEL_URL": "mysql://h/db"})


def test_settings_never_show_a_password_in_their_repr() -> None:
    """Settings end up in tracebacks and debug logs: URLs lose their credentials there."""
    settings = Settings.from_env(
        {
            "NATS_URL": "nats://toolkit:Marker-Pa55@nats1:4222",
            "TOOLKIT_READ_MODEL_URL": "postgresql://reader:Marker-Pa55@db/models",
            "TOOLKIT_API_TOKENS": "Marker-Token",
        }
    )
    shown = repr(settings)
    assert "Marker" not in shown
    assert "nats://nats1:4222" in shown and "postgresql://db/models" in shown
