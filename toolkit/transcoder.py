"""A faster transcoder for eventsourcing: orjson instead of the json module, and the same
stored format (custom types as ``{"_type_": name, "_data_": value}`` objects).

Logs written by eventsourcing's ``JSONTranscoder`` read back unchanged, and the other way
round, so switching costs nothing but the install. Registered transcodings work as with
``JSONTranscoder`` (UUID, Decimal and datetime are registered by ``Application``).
"""

from __future__ import annotations

from typing import Any

import orjson
from eventsourcing.persistence import JSONTranscoder, TranscodingNotRegisteredError

_PLAIN = frozenset({str, int, float, bool, type(None)})
_OPTIONS = orjson.OPT_NON_STR_KEYS


class OrjsonTranscoder(JSONTranscoder):
    """Select it with ``TRANSCODER_TOPIC=toolkit.transcoder:OrjsonTranscoder`` (the
    toolkit's contexts do by default)."""

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
        """Replace tagged objects in what orjson decoded, in place: plain values (most of
        them) cost one type check each."""
        if type(o) is dict:
            if len(o) == 2 and "_type_" in o and "_data_" in o:
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
            for k, v in o.items():
                t = type(v)
                if t is dict or t is list:
                    o[k] = self._untag(v)
            return o
        for i, v in enumerate(o):  # a list
            t = type(v)
            if t is dict or t is list:
                o[i] = self._untag(v)
        return o
