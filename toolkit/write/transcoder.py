"""A faster transcoder for eventsourcing: orjson instead of the json module, and the same
stored format (custom types as ``{"_type_": name, "_data_": value}`` objects).

Logs written by eventsourcing's ``JSONTranscoder`` read back unchanged, and the other way
round, so switching costs nothing but the install. Registered transcodings work as with
``JSONTranscoder`` (UUID, Decimal and datetime are registered by ``Application``).

What orjson cannot do, the json module does, as ``JSONTranscoder`` itself would: orjson
writes NaN and ±infinity as ``null``, refuses ints beyond 64 bits (and reads them as
floats), and refuses the ``NaN``/``Infinity`` that the json module writes. A document
holding one of those is written or read by the json module instead, in the bytes
``JSONTranscoder`` writes (``NaN``, ``Infinity``, ``-Infinity``, ints of any size), so
every value ``JSONTranscoder`` round-trips does here. Telling those documents apart costs
the common path a check a float, nothing else. (Some floats are spelt differently by the
two, ``0.00001`` for ``1e-05``: the same value either way.)
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

_PLAIN = frozenset({str, int, bool, type(None)})
"""Written as they are by orjson and the json module alike (a float is checked first)."""
_OPTIONS = orjson.OPT_NON_STR_KEYS
_EXACT = 2.0**63
"""orjson reads an integer beyond 64 bits as a float: a float this large or larger may have
been one, so its document is read again by the json module."""


class _NonFinite(float):
    """A NaN or ±infinity on its way out: orjson refuses float subclasses (it would write a
    plain one as ``null``), so the document goes to the json module, which writes ``NaN``,
    ``Infinity`` or ``-Infinity`` as eventsourcing does."""


class _Inexact(Exception):
    """orjson read a float where the json module may read an int beyond 64 bits."""


class OrjsonTranscoder(JSONTranscoder):
    """Select it with ``TRANSCODER_TOPIC=toolkit.write.transcoder:OrjsonTranscoder`` (the
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
        tagged = self._tag(obj)
        try:
            return orjson.dumps(tagged, option=_OPTIONS)
        except orjson.JSONEncodeError:  # NaN, ±infinity, an int beyond 64 bits, nesting
            return self.encoder.encode(tagged).encode("utf8")  # deeper than 255 levels

    def decode(self, data: bytes) -> Any:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:  # NaN, ±Infinity (or not JSON: the json module
            return super().decode(data)  # says so as JSONTranscoder does)
        try:
            return self._untag(obj)
        except _Inexact:
            return super().decode(data)

    def _tag(self, o: Any) -> Any:
        t = type(o)
        if t is dict:
            out = {}
            for k, v in o.items():
                out[k] = v if type(v) in _PLAIN else self._tag(v)
            return out
        if t in _PLAIN:
            return o
        if t is float:
            return o if o - o == 0.0 else _NonFinite(o)  # NaN - NaN and inf - inf are NaN
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
        decoded there, without a call per level. Raises ``_Inexact`` for a float that
        may have been an int beyond 64 bits."""
        t = type(o)
        if t is dict:
            if "_type_" in o and len(o) == 2 and "_data_" in o:
                return self._decode_tagged(o)
            items: Any = o.items()
        elif t is list:
            items = enumerate(o)
        elif t is float and not -_EXACT < o < _EXACT:
            raise _Inexact
        else:
            return o
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
            elif t is float and not -_EXACT < v < _EXACT:
                raise _Inexact
        return o

    def _decode_tagged(self, o: dict[str, Any]) -> Any:
        name = o["_type_"]
        transcoding = self.names.get(name)
        if transcoding is None:
            raise TranscodingNotRegisteredError(
                f"Data serialized with name '{name}' is not deserializable. "
                "Please register a custom transcoding for this type."
            )
        return transcoding.decode(self._untag(o["_data_"]))


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
