"""Whether a contract version's schema may change: the comparison behind ``toolkit
contracts check`` and ``write``. Pure: two JSON Schema documents in, the breaks out.

A version's schema is a promise twice over: to every consumer built from it (each holds
its own class for the version, and msgspec rejects what that class does not accept) and
about every message of the version in the stream, old ones included (they stay forever,
and a consumer starting later reads them from the beginning). So the values a field
accepts may neither grow (the consumers of the version reject the new ones) nor shrink
(the messages already in the stream fall outside the schema). The rules, each a
:class:`Break`'s ``rule``:

- ``removed``: a field of the version is gone (its consumers read it).
- ``required added``: a new field without a default (the version's old messages lack it).
- ``now required`` / ``no longer required``: a field changed between required and optional
  (old messages may lack it; or a producer keeping to the new schema may leave it out).
- ``retyped``: the JSON types a field accepts changed (``integer -> string``, a ``null``
  added or removed, a ``format`` changed), widened or narrowed alike.
- ``enum narrowed`` / ``enum widened``: values of a ``Literal`` or an ``Enum`` removed (old
  messages carry them) or added (consumers' decoders reject a value they do not know).
- ``constraint changed``: a bound (``maxLength``, ``minimum``, ``pattern``, ...) changed.
- ``added to a closed object``: a field added to a struct that forbids unknown fields.

What passes: an optional field (one with a default) added to an open struct, and any
change to titles, descriptions and defaults. A new contract, or a new version of one, is
no comparison at all: it has no consumers yet.
"""

from __future__ import annotations

from typing import Any, NamedTuple

Schema = dict[str, Any]

_ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$comment", "deprecated", "$schema"}
)
_STRUCTURE = frozenset(
    {"type", "format", "contentEncoding", "properties", "required", "items", "prefixItems",
     "additionalProperties", "anyOf", "enum", "$ref", "$defs", "definitions", "discriminator",
     "propertyNames"}
)  # fmt: skip


class Break(NamedTuple):
    """A change that breaks the consumers of a contract version."""

    path: str
    """The field: ``lines[].quantity`` (``[]`` an array's items, ``{}`` a map's values,
    ``[0]`` a tuple's first); empty for the contract itself."""
    rule: str
    detail: str
    """What changed, e.g. ``integer -> string``."""
    why: str
    """Who it breaks, e.g. ``consumers of the version read integer``."""

    def line(self, name: str, version: int) -> str:
        """One readable line: ``sales.OrderPlaced v1: field 'lines[].quantity' retyped
        (integer -> string): consumers of v1 read integer``."""
        where = f"field '{self.path}' " if self.path else ""
        why = self.why.replace("the version", f"v{version}")
        return f"{name} v{version}: {where}{self.rule} ({self.detail}): {why}"


def compare(old: Schema, new: Schema) -> list[Break]:
    """The breaks for the consumers of a version whose schema was ``old`` and is ``new``
    (each a whole document: ``$ref`` is resolved in its own ``$defs``/``definitions``)."""
    breaks: list[Break] = []
    _Comparison(old, new, breaks).node(old, new, "", frozenset())
    return breaks


class _Comparison:
    def __init__(self, old_root: Schema, new_root: Schema, breaks: list[Break]) -> None:
        self.roots = (old_root, new_root)
        self.breaks = breaks

    def add(self, path: str, rule: str, detail: str, why: str) -> None:
        self.breaks.append(Break(path, rule, detail, why))

    def node(self, old: Any, new: Any, path: str, seen: frozenset[tuple[str, str]]) -> None:
        refs = (_ref(old), _ref(new))
        if refs != ("", "") and refs in seen:  # a recursive struct: compared already
            return
        seen = seen | {refs} if refs != ("", "") else seen
        old, new = _resolve(old, self.roots[0]), _resolve(new, self.roots[1])
        if "enum" in old and "enum" in new:
            self.enum(old["enum"], new["enum"], path)
        elif (was := self.kind(old, 0)) != (now := self.kind(new, 1)):
            self.add(path, "retyped", f"{was} -> {now}", f"consumers of the version read {was}")
            return
        elif "anyOf" in old:
            self.union(old["anyOf"], new["anyOf"], path, seen)
        elif "properties" in old:
            self.struct(old, new, path, seen)
        elif "prefixItems" in old:
            for i, (o, n) in enumerate(zip(old["prefixItems"], new["prefixItems"], strict=False)):
                self.node(o, n, f"{path}[{i}]", seen)
        else:
            for key, step in (("items", "[]"), ("additionalProperties", "{}")):
                if isinstance(old.get(key), dict) and isinstance(new.get(key), dict):
                    self.node(old[key], new[key], f"{path}{step}", seen)
            if isinstance(old.get("propertyNames"), dict) or isinstance(
                new.get("propertyNames"), dict
            ):
                keys = ({"type": "string"} | old.get("propertyNames", {}),
                        {"type": "string"} | new.get("propertyNames", {}))  # fmt: skip
                self.node(*keys, f"{path}{{key}}", seen)
        self.constraints(old, new, path)

    def enum(self, old: list[Any], new: list[Any], path: str) -> None:
        removed = [v for v in old if v not in new]
        added = [v for v in new if v not in old]
        if removed:
            self.add(path, "enum narrowed", f"removed {_values(removed)}",
                     "messages of the version in the stream carry them")  # fmt: skip
        if added:
            self.add(path, "enum widened", f"added {_values(added)}",
                     "consumers of the version reject values they do not know")  # fmt: skip

    def union(
        self, old: list[Any], new: list[Any], path: str, seen: frozenset[tuple[str, str]]
    ) -> None:
        """Members are matched by kind (the same kinds on both sides: :meth:`kind` said
        so); structs of one union, by their order."""
        by_kind: dict[str, list[Any]] = {}
        for member in new:
            by_kind.setdefault(self.kind(member, 1), []).append(member)
        for member in old:
            self.node(member, by_kind[self.kind(member, 0)].pop(0), path, seen)

    def struct(self, old: Schema, new: Schema, path: str, seen: frozenset[tuple[str, str]]) -> None:
        was, now = old.get("properties", {}), new.get("properties", {})
        required = set(old.get("required", ())), set(new.get("required", ()))
        at = f"{path}." if path else ""
        for name in was:
            if name not in now:
                self.add(f"{at}{name}", "removed", f"was {self.kind(was[name], 0)}",
                         "consumers of the version read it")  # fmt: skip
                continue
            if name in required[0] and name not in required[1]:
                self.add(f"{at}{name}", "no longer required", "a default was given",
                         "consumers of the version need it in every message")  # fmt: skip
            elif name in required[1] and name not in required[0]:
                self.add(f"{at}{name}", "now required", "its default was taken away",
                         "messages of the version in the stream may lack it")  # fmt: skip
            self.node(was[name], now[name], f"{at}{name}", seen)
        for name in now:
            if name in was:
                continue
            if name in required[1]:
                self.add(f"{at}{name}", "required added", "a new field without a default",
                         "messages of the version in the stream lack it")  # fmt: skip
            elif old.get("additionalProperties") is False:
                self.add(f"{at}{name}", "added to a closed object", "unknown fields forbidden",
                         "consumers of the version reject fields they do not know")  # fmt: skip

    def constraints(self, old: Schema, new: Schema, path: str) -> None:
        keys = (set(old) | set(new)) - _ANNOTATIONS - _STRUCTURE
        for key in sorted(keys):
            if old.get(key) != new.get(key):
                self.add(path, "constraint changed",
                         f"{key} {_shown(old.get(key))} -> {_shown(new.get(key))}",
                         "the version's values were checked against the old bound")  # fmt: skip

    def kind(self, node: Any, side: int) -> str:
        """What JSON a schema accepts, to compare and to say: ``integer``, ``string (uuid)``,
        ``object``, ``array``, ``map``, ``tuple``, ``integer or null``, ``enum``."""
        node = _resolve(node, self.roots[side])
        if "anyOf" in node:
            return " or ".join(sorted(self.kind(member, side) for member in node["anyOf"]))
        if "enum" in node:
            return "enum"
        kind = node.get("type", "any")
        if isinstance(kind, list):
            return " or ".join(sorted(kind))
        if kind == "object":
            return "object" if "properties" in node else "map"
        if kind == "array":
            return "tuple" if "prefixItems" in node else "array"
        detail = node.get("format") or node.get("contentEncoding")
        return f"{kind} ({detail})" if detail else str(kind)


def _ref(node: Any) -> str:
    ref = node.get("$ref") if isinstance(node, dict) else None
    return ref if isinstance(ref, str) else ""


def _resolve(node: Any, root: Schema) -> Schema:
    """The schema ``node`` stands for: a ``$ref`` followed (within its document)."""
    if not isinstance(node, dict):  # true/false: anything, nothing
        return {} if node else {"not": {}}
    for _ in range(64):  # a reference to itself ends here
        if not isinstance(ref := node.get("$ref"), str):
            break
        target: Any = root
        for part in ref.removeprefix("#/").split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return dict(node)


def _values(values: list[Any]) -> str:
    return ", ".join(repr(v) for v in values)


def _shown(value: Any) -> str:
    return "none" if value is None else repr(value)
