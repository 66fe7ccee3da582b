"""A faster transcoder for eventsourcing: orjson instead of the json module, and the same
stored format (custom types as ``{"_type_": name, "_data_": value}`` objects).

Logs written by eventsourcing's ``JSONTranscoder`` read back unchanged, and the other way
round, so switching costs nothing but the install. Registered transcodings work as with
``JSONTranscoder`` (UUID, Decimal and datetime are registered by ``Application``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import msgspec
import orjson
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Transcoding,
    TranscodingNotRegisteredError,
    UUIDAsHex,
)

_PLAIN = frozenset({str, int, float, bool, type(None)})
_OPTIONS = orjson.OPT_NON_STR_KEYS


class OrjsonTranscoder(JSONTranscoder):
    """Select it with ``TRANSCODER_TOPIC=toolkit.transcoder:OrjsonTranscoder`` (the
    toolkit's contexts do by default)."""

    def __init__(self) -> None:
        super().__init__()
        self._decoders: dict[str, Callable[[str], Any]] = {}
        """Names of eventsourcing's own transcodings -> a direct decoder of their string
        form (the relay and catch-ups decode every event, and a bound method a level
        costs as much as the decoding)."""

    def register(self, transcoding: Transcoding) -> None:
        super().register(transcoding)
        fast = _FAST_DECODERS.get(type(transcoding))
        if fast is None:
            self._decoders.pop(transcoding.name, None)
        else:
            self._decoders[transcoding.name] = fast

    def encode(self, obj: Any) -> bytes:
        return orjson.dumps(self._tag(obj), option=_OPTIONS)

    def decode(self, data: bytes) -> Any:
        obj = orjson.loads(data)
        t = type(obj)
        return self._untag(obj) if t is dict or t is list else obj

    def _tag(self, o: Any) -> Any:
        t = type(o)
        if t is dict:
            out = {}
            for k, v in o.items():
                out[k] = v if type(v) in _PLAIN else self._tag(v)
            return out
        if t in _PLAIN:
            return o
        if t is list or t is tuple:
            return [v if type(v) in _PLAIN else self._tag(v) for v in o]
        transcoding = self.types.get(t)
        if transcoding is None:
            if isinstance(o, dict):
                return {k: self._tag(v) for k, v in o.items()}
            if isinstance(o, list | tuple):
                return [self._tag(v) for v in o]
            if isinstance(o, str | int | float):
                return o
            raise TranscodingNotRegisteredError(
                f"Object of type {t} is not serializable. Please define and register "
                "a custom transcoding for this type."
            )
        return {"_type_": transcoding.name, "_data_": self._tag(transcoding.encode(o))}

    def _untag(self, o: Any) -> Any:
        """Replace tagged objects in what orjson decoded, in place. Plain values (most of
        them) cost one type check each; a tagged value met inside a dict or list is
        decoded there, without a call per level."""
        if type(o) is dict:
            if "_type_" in o and len(o) == 2 and "_data_" in o:
                return self._decode_tagged(o)
            items: Any = o.items()
        else:  # a list
            items = enumerate(o)
        decoders = self._decoders
        for k, v in items:
            t = type(v)
            if t is dict:
                if "_type_" in v and len(v) == 2:
                    decode = decoders.get(v["_type_"])
                    data = v.get("_data_", v)
                    if decode is not None and type(data) is str:
                        o[k] = decode(data)
                        continue
                o[k] = self._untag(v)
            elif t is list:
                o[k] = self._untag(v)
        return o

    def _decode_tagged(self, o: dict[str, Any]) -> Any:
        name = o["_type_"]
        transcoding = self.names.get(name)
        if transcoding is None:
            raise TranscodingNotRegisteredError(
                f"Data serialized with name '{name}' is not deserializable. "
                "Please register a custom transcoding for this type."
            )
        data = o["_data_"]
        if type(data) is dict or type(data) is list:
            data = self._untag(data)
        return transcoding.decode(data)


def decode_uuid(data: str) -> UUID:
    """``UUID(data)`` in C (msgspec) for the hex and canonical forms; any other form
    ``UUID`` accepts goes to ``UUID``, so what decodes is unchanged."""
    try:
        return msgspec.convert(data, UUID)
    except msgspec.ValidationError:
        return UUID(data)


_FAST_DECODERS: dict[type[Transcoding], Callable[[str], Any]] = {
    UUIDAsHex: decode_uuid,
    DecimalAsStr: Decimal,
    DatetimeAsISO: datetime.fromisoformat,
}
