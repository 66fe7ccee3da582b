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

import types
import typing
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
    Transcoder,
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


_fromisoformat = datetime.fromisoformat

_FAST_DECODERS: dict[type[Transcoding], Callable[[str], Any]] = {
    UUIDAsHex: decode_uuid,
    DecimalAsStr: Decimal,
    DatetimeAsISO: datetime.fromisoformat,
}


# Typed decoding: the stored state of one event class, by its annotations, in C.

StateDecoder = Callable[[bytes], tuple[dict[str, Any], Any]]
"""Stored state -> (the domain event's ``__dict__`` but its originator id and version,
what the state held under ``extra``, or None)."""

_IDENTITY = frozenset({str, int, bool, type(None)})
_CONVERTED: dict[type[Transcoding], tuple[type, str]] = {
    UUIDAsHex: (UUID, "{}"),  # msgspec's UUID parser is decode_uuid's first try
    DecimalAsStr: (Decimal, "{}"),  # msgspec calls Decimal(str), as _FAST_DECODERS do
    DatetimeAsISO: (str, "_fromisoformat({})"),
}
"""eventsourcing's transcodings of a value: the type of ``_data_`` msgspec decodes, and
how its decoded form becomes the value (exactly as ``_FAST_DECODERS`` does)."""


class _Unsupported(Exception):
    pass


def state_decoder(transcoder: Transcoder, event_class: type, extra: str) -> StateDecoder | None:
    """A decoder of the stored states of ``event_class`` that gives what this
    transcoder's ``decode`` gives, built from the class's annotations: msgspec decodes
    and checks the whole document in C, and generated code unwraps the tagged values.

    None when the annotations hold anything but ``str``, ``int``, ``bool``, ``None``,
    UUID, Decimal and datetime (with eventsourcing's transcodings registered for them),
    lists, ``dict[str, ...]``, unions with None and TypedDicts of those (floats, ``Any``,
    custom types, dataclasses: the transcoder's walk decides what those become). A state
    that does not fit the annotations exactly (a key more or less, a value of another
    type or form, a ``class_version``) raises ``msgspec.ValidationError``: the caller
    decodes it the general way. ``extra`` is the one key the state may also hold (a
    cause, see :mod:`toolkit.write.causation`), a list of strings or None."""
    if type(transcoder) not in (OrjsonTranscoder, JSONTranscoder):
        return None
    assert isinstance(transcoder, JSONTranscoder)
    try:
        hints = typing.get_type_hints(event_class)
    except Exception:
        return None
    fields = [
        (name, hint)
        for name, hint in hints.items()
        if name not in ("originator_id", "originator_version")
        and typing.get_origin(hint) is not typing.ClassVar
    ]
    builder = _Builder(transcoder)
    try:
        struct = builder.struct(fields, "s")
    except _Unsupported:
        return None
    names = [f"f{i}" for i in range(len(fields))]
    top = msgspec.defstruct(
        f"{event_class.__name__}State",
        [*zip(names, struct.kinds, strict=True), ("x", list[str | None] | None, None)],
        rename={**dict(zip(names, (n for n, _ in fields), strict=True)), "x": extra},
        forbid_unknown_fields=True,
    )
    code = f"def decoder(state):\n    s = _decode(state)\n    return {struct.expression}, s.x\n"
    namespace: dict[str, Any] = {**builder.namespace, "_decode": msgspec.json.Decoder(top).decode}
    # (the code is built from the annotations' structure; keys are written as reprs)
    exec(compile(code, f"<state decoder of {event_class.__qualname__}>", "exec"), namespace)
    decoder: StateDecoder = namespace["decoder"]
    return decoder


class _Struct(typing.NamedTuple):
    kinds: list[Any]
    expression: str


class _Builder:
    def __init__(self, transcoder: JSONTranscoder) -> None:
        self.transcoder = transcoder
        self.namespace: dict[str, Any] = {"_fromisoformat": _fromisoformat}
        self.tags: dict[str, Any] = {}
        self.count = 0

    def struct(self, fields: list[tuple[str, Any]], var: str) -> _Struct:
        """The stored form of a dict of these fields (a Struct's field types, with
        internal names ``f0``, ``f1``...), and the expression of the dict."""
        kinds, items = [], []
        for i, (name, hint) in enumerate(fields):
            kind, expression = self.value(hint, f"{var}.f{i}")
            kinds.append(kind)
            items.append(f"{name!r}: {expression}")
        return _Struct(kinds, "{" + ", ".join(items) + "}")

    def value(self, hint: Any, var: str) -> tuple[Any, str]:
        """(the msgspec type of a value's stored form, the expression of its value from
        ``var``, the expression of that form)."""
        if hint in _IDENTITY:
            return hint, var
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin in (typing.Union, types.UnionType):
            if len(args) != 2 or type(None) not in args:
                raise _Unsupported
            (inner,) = (a for a in args if a is not type(None))
            kind, expression = self.value(inner, var)
            if expression == var:
                return kind | None, var
            return kind | None, f"(None if {var} is None else {expression})"
        if origin is list and len(args) == 1:
            loop = self.name()
            kind, expression = self.value(args[0], loop)
            if expression == loop:
                return list[kind], var  # type: ignore[valid-type]
            return list[kind], f"[{expression} for {loop} in {var}]"  # type: ignore[valid-type]
        if origin is dict and len(args) == 2 and args[0] is str:
            loop = self.name()
            kind, expression = self.value(args[1], loop)
            if expression == loop:
                return dict[str, kind], var  # type: ignore[valid-type]
            comprehension = f"{{k{loop}: {expression} for k{loop}, {loop} in {var}.items()}}"
            return dict[str, kind], comprehension  # type: ignore[valid-type]
        if typing.is_typeddict(hint):
            if hint.__required_keys__ != frozenset(hint.__annotations__):
                raise _Unsupported  # keys that may be missing: the general way
            fields = list(typing.get_type_hints(hint).items())
            inner = self.struct(fields, var)
            names = [f"f{i}" for i in range(len(fields))]
            kind = msgspec.defstruct(
                f"{hint.__name__}Stored",
                list(zip(names, inner.kinds, strict=True)),
                rename=dict(zip(names, (name for name, _ in fields), strict=True)),
                forbid_unknown_fields=True,
            )
            return kind, inner.expression
        if isinstance(hint, type):
            transcoding = self.transcoder.types.get(hint)
            converted = _CONVERTED.get(type(transcoding)) if transcoding else None
            if transcoding is None or converted is None:
                raise _Unsupported
            data_type, template = converted
            tag = self.tags.get(transcoding.name)
            if tag is None:
                tag = self.tags[transcoding.name] = msgspec.defstruct(
                    f"Tagged_{transcoding.name}",
                    [("d", data_type)],
                    tag_field="_type_",
                    tag=transcoding.name,
                    rename={"d": "_data_"},
                    forbid_unknown_fields=True,
                )
            return tag, template.format(f"{var}.d")
        raise _Unsupported

    def name(self) -> str:
        self.count += 1
        return f"v{self.count}"
