"""Integration-event contracts: the public, versioned shape of what crosses a boundary.

A contract is a msgspec Struct marked with :func:`contract`, which gives it a stable name
(``"sales.OrderPlaced"``) and a version. The name is independent of the Python module
that defines it, so moving code never changes the wire. Producer and consumer each hold
their own classes for a contract (a consumer declares only the fields it reads); a
:class:`ContractRegistry` maps (name, version) to the class that decodes it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar, TypeVar

import msgspec

from toolkit.errors import ContractError


class IntegrationEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every contract. Subclasses are plain msgspec Structs."""

    __contract_name__: ClassVar[str] = ""
    __contract_version__: ClassVar[int] = 0


E = TypeVar("E", bound=type[IntegrationEvent])

_CONTRACT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\.[A-Za-z][A-Za-z0-9_-]{0,63}")

_encoder = msgspec.json.Encoder(decimal_format="string", uuid_format="canonical")


def contract(name: str, version: int = 1) -> Callable[[E], E]:
    """Give an integration event class its stable name and version.

    The name is ``<context>.<EventName>``; the event name becomes the last subject token.
    """
    if not _CONTRACT_NAME.fullmatch(name):
        raise ContractError(
            f"invalid contract name {name!r}: expected '<context>.<EventName>', "
            "each part a letter then letters, digits, '_' or '-'"
        )
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ContractError(f"invalid version {version!r} for contract {name!r}: use 1 or more")

    def mark(cls: E) -> E:
        cls.__contract_name__ = name
        cls.__contract_version__ = version
        return cls

    return mark


def contract_of(cls: type[IntegrationEvent]) -> tuple[str, int]:
    name = cls.__contract_name__
    if not name:
        raise ContractError(f"{cls.__qualname__} is not marked with @contract(name, version)")
    return name, cls.__contract_version__


def event_name(contract_name: str) -> str:
    """``"sales.OrderPlaced"`` -> ``"OrderPlaced"``: the subject's last token."""
    return contract_name.rpartition(".")[2]


def encode(event: IntegrationEvent) -> bytes:
    """The JSON body of an event (decimals as strings, so no precision is lost)."""
    return _encoder.encode(event)


class ContractRegistry:
    """Which class decodes which (contract name, version), with decoders built once."""

    def __init__(self, classes: Iterable[type[IntegrationEvent]] = ()) -> None:
        self._classes: dict[tuple[str, int], type[IntegrationEvent]] = {}
        self._decoders: dict[tuple[str, int], msgspec.json.Decoder[Any]] = {}
        for cls in classes:
            self.register(cls)

    def register(self, cls: type[IntegrationEvent]) -> None:
        key = contract_of(cls)
        existing = self._classes.get(key)
        if existing is not None and existing is not cls:
            raise ContractError(
                f"contract {key[0]} v{key[1]} is already registered to {existing.__qualname__}"
            )
        self._classes[key] = cls
        self._decoders[key] = msgspec.json.Decoder(cls)

    def __contains__(self, key: object) -> bool:
        return key in self._classes

    def __iter__(self) -> Iterator[type[IntegrationEvent]]:
        return iter(self._classes.values())

    def decoder(self, name: str, version: int) -> msgspec.json.Decoder[Any] | None:
        return self._decoders.get((name, version))

    def decode(self, name: str, version: int, body: bytes) -> IntegrationEvent:
        decoder = self._decoders.get((name, version))
        if decoder is None:
            raise ContractError(f"no class registered for contract {name} v{version}")
        try:
            event: IntegrationEvent = decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise ContractError(f"{name} v{version} does not match its contract: {exc}") from exc
        except msgspec.DecodeError as exc:
            raise ContractError(f"{name} v{version} body is not valid JSON: {exc}") from exc
        return event
