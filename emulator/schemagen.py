"""Values valid against a JSON schema, generated from an item's content.

A schema is compiled once (per distinct JSON text) into a tree of nodes,
tuples ``(KIND, ...)``, and then into a generator: a function of an item
whose tree walk, value paths and seed bytes were worked out once per schema,
so a 100,000-request batch costs one compile. Every value is drawn from an
rng seeded by (content key, path) (see emulator.rng).

Supported subset: object/properties/required/additionalProperties, string
enum/minLength/maxLength/format, number/integer minimum/maximum/exclusive*/
multipleOf, boolean, array items/minItems/maxItems/prefixItems/uniqueItems,
null and type lists, const, enum, anyOf/oneOf, allOf, local $ref; and the
constraints the SDK moves into a description (``{minimum: -1, maximum: 1}``).
``pattern`` is not honoured.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Callable, Dict, List, Tuple

from emulator import jsonutil
from emulator.prompts import FILLER, Item
from emulator.rng import Rng, new_rng, path_suffix, seed_state

#: How often a nullable value (a type list with "null") is None.
_NULL_PROBABILITY = 0.2
#: Deeper than this ($ref cycles, deep nesting) a value is its type's default.
_MAX_DEPTH = 12


def resolve(schema: Any, root: Any, depth: int = 0) -> Any:
    """Follow local $ref and merge allOf, so the result can be read directly."""
    while isinstance(schema, dict) and "$ref" in schema and depth < _MAX_DEPTH:
        ref = schema["$ref"]
        target: Any = root
        if isinstance(ref, str) and ref.startswith("#"):
            for part in [p for p in ref[1:].split("/") if p]:
                part = part.replace("~1", "/").replace("~0", "~")
                target = target.get(part) if isinstance(target, dict) else None
        else:
            target = {}
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**(target or {}), **rest} if rest else (target or {})
        depth += 1
    if isinstance(schema, dict) and "allOf" in schema:
        merged: Dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema.get("allOf") or ():
            part = resolve(part, root, depth + 1)
            if isinstance(part, dict):
                for k, v in part.items():
                    if k == "properties" and isinstance(merged.get(k), dict):
                        merged[k] = {**merged[k], **v}
                    elif k == "required" and isinstance(merged.get(k), list):
                        merged[k] = merged[k] + [r for r in v if r not in merged[k]]
                    else:
                        merged.setdefault(k, v)
        schema = merged
    return schema


# Compiled schema nodes are tuples: (kind, ...). Compiling once per distinct
# schema (not once per record) keeps a 100,000-request batch cheap. The kinds
# are public: emulator.packs reads an item schema's compiled fields.
CONST, ENUM, CHOICE, TYPES, OBJECT, ARRAY, STRING, INT, NUM, BOOL, NULL = range(11)
_DEFAULTS = {"object": {}, "array": [], "string": "", "number": 0, "integer": 0, "boolean": False}


def _infer_type(schema: Dict[str, Any]) -> str:
    if "properties" in schema or "required" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return "string"


def _bounds(schema: Dict[str, Any]):
    lo, hi = schema.get("minimum"), schema.get("maximum")
    xlo, xhi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if isinstance(xlo, bool):  # draft-4 style boolean flags
        xlo, lo = (lo if xlo else None), (None if xlo else lo)
    if isinstance(xhi, bool):
        xhi, hi = (hi if xhi else None), (None if xhi else hi)
    return lo, hi, xlo, xhi


def _int_range(lo, hi, xlo, xhi) -> Tuple[int, int]:
    lo = math.ceil(lo) if lo is not None else None
    hi = math.floor(hi) if hi is not None else None
    if xlo is not None:
        lo = max(lo, math.floor(xlo) + 1) if lo is not None else math.floor(xlo) + 1
    if xhi is not None:
        hi = min(hi, math.ceil(xhi) - 1) if hi is not None else math.ceil(xhi) - 1
    return _close_open_ends(lo, hi, 0)


#: Width of the range drawn from when a schema bounds a number on one side only.
_OPEN_RANGE_WIDTH = 100


def _close_open_ends(lo, hi, zero):
    """(lo, hi) with a missing end replaced: [0, 100] with none, else 100 from the given end."""
    if lo is None and hi is None:
        return zero, zero + _OPEN_RANGE_WIDTH
    if lo is None:
        return hi - _OPEN_RANGE_WIDTH, hi
    if hi is None:
        return lo, lo + _OPEN_RANGE_WIDTH
    return lo, hi


#: The SDK's `transform_schema` moves keywords the API's structured outputs do
#: not accept (minimum, maxLength, ...) into the description as a trailing
#: "{minimum: -1, maximum: 1}"; the real model reads and follows them, so the
#: emulator does too.
_DESCRIBED = re.compile(r"\{((?:\w+: [^{},]+)(?:, \w+: [^{},]+)*)\}\s*$")


def _described_constraints(schema: Dict[str, Any]) -> Dict[str, Any]:
    match = _DESCRIBED.search(schema.get("description") or "")
    if not match:
        return schema
    extra: Dict[str, Any] = {}
    for pair in match.group(1).split(", "):
        key, _, raw = pair.partition(": ")
        try:
            extra[key] = json.loads(raw)
        except ValueError:
            extra[key] = raw
    return {**extra, **schema}


def compile_node(schema: Any, root: Any, depth: int) -> tuple:
    schema = resolve(schema, root)
    if isinstance(schema, dict):
        schema = _described_constraints(schema)
    if schema is True or not isinstance(schema, dict):
        return (STRING, None, 0, None)
    if "const" in schema:
        return (CONST, schema["const"])
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return (ENUM, list(schema["enum"]))
    typ = schema.get("type")
    if depth >= _MAX_DEPTH:
        t = typ if isinstance(typ, str) else (typ[0] if isinstance(typ, list) and typ else _infer_type(schema))
        return (CONST, _DEFAULTS.get(t))
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            base = {k: v for k, v in schema.items() if k != key}
            nodes = []
            for option in options:
                option = resolve(option, root)
                nodes.append(compile_node({**base, **option} if isinstance(option, dict) else option, root, depth + 1))
            return (CHOICE, nodes)
    if isinstance(typ, list):
        non_null = [t for t in typ if t != "null"]
        return (TYPES, "null" in typ, [compile_node({**schema, "type": t}, root, depth + 1) for t in non_null])
    if typ is None:
        typ = _infer_type(schema)
    if typ == "object":
        entries = []
        props = schema.get("properties")
        if isinstance(props, dict):
            entries = [(name, compile_node(sub, root, depth + 1)) for name, sub in props.items()]
        names = {n for n, _ in entries}
        for name in schema.get("required") or ():
            if name not in names:
                entries.append((name, (STRING, None, 0, None)))
                names.add(name)
        return (OBJECT, entries)
    if typ == "array":
        lo = int(schema.get("minItems", 0) or 0)
        hi = schema.get("maxItems")
        start = max(lo, 1)
        top = start + 2 if hi is None else min(int(hi), start + 2)
        if hi is not None and int(hi) < start:
            start = top = max(lo, int(hi))
        prefix = schema.get("prefixItems") if isinstance(schema.get("prefixItems"), list) else []
        return (ARRAY, start, top, compile_node(schema.get("items", {}), root, depth + 1),
                [compile_node(p, root, depth + 1) for p in prefix], bool(schema.get("uniqueItems")))
    if typ == "string":
        hi = schema.get("maxLength")
        return (STRING, schema.get("format"), int(schema.get("minLength", 0) or 0),
                int(hi) if hi is not None else None)
    if typ == "integer":
        lo, hi = _int_range(*_bounds(schema))
        m = schema.get("multipleOf")
        return (INT, lo, hi, m if isinstance(m, int) and not isinstance(m, bool) and m > 0 else None)
    if typ == "number":
        lo, hi, xlo, xhi = _bounds(schema)
        m = schema.get("multipleOf")
        if isinstance(m, (int, float)) and not isinstance(m, bool) and m > 0:
            klo, khi = _int_range(*(None if v is None else v / m for v in (lo, hi, xlo, xhi)))
            return (INT, klo, khi, None, m)
        a, b = _close_open_ends(lo if lo is not None else xlo, hi if hi is not None else xhi, 0.0)
        return (NUM, float(a), float(b), xlo, xhi)
    if typ == "boolean":
        return (BOOL,)
    if typ == "null":
        return (CONST, None)
    return (STRING, None, 0, None)


_COMPILED: Dict[bytes, Any] = {}


def cached(key: bytes, build):
    hit = _COMPILED.get(key)
    if hit is None:
        if len(_COMPILED) > 512:
            _COMPILED.clear()
        hit = _COMPILED[key] = build()
    return hit


def schema_key(schema: Any) -> bytes:
    try:
        return jsonutil.dumps_bytes(schema)
    except Exception:
        return repr(schema).encode()


def compile_schema(schema: Any) -> tuple:
    """The compiled node of a whole schema (cached by its JSON text)."""
    return cached(b"S" + schema_key(schema), lambda: compile_node(schema, schema, 0))


def _sentence(item: Item, rng: Rng, lo: int = 3, hi: int = 8) -> str:
    words = item.words
    n = lo + rng.below(hi - lo + 1) if hi >= lo else lo  # rng.between(lo, hi), one call less
    if len(words) >= n:
        start = rng.below(len(words) - n + 1)
        picked = words[start:start + n]
    else:
        picked = words + list(FILLER[: n - len(words)])
    text = " ".join(picked)
    return text[:1].upper() + text[1:] + "."


def _string(node: tuple, item: Item, rng: Rng) -> str:
    _, fmt, lo, hi = node
    if fmt is None:
        s = _sentence(item, rng)
    elif fmt == "date":
        s = f"20{rng.between(20, 29)}-{rng.between(1, 12):02d}-{rng.between(1, 28):02d}"
    elif fmt == "date-time":
        s = (f"20{rng.between(20, 29)}-{rng.between(1, 12):02d}-{rng.between(1, 28):02d}"
             f"T{rng.between(0, 23):02d}:{rng.between(0, 59):02d}:{rng.between(0, 59):02d}Z")
    elif fmt == "time":
        s = f"{rng.between(0, 23):02d}:{rng.between(0, 59):02d}:{rng.between(0, 59):02d}"
    elif fmt in ("email", "uri", "url"):
        words = item.words
        w = "".join(ch for ch in words[rng.below(len(words))].lower() if ch.isalnum()) or "item"
        s = f"{w}@example.com" if fmt == "email" else f"https://example.com/{w}"
    elif fmt == "uuid":
        h = f"{rng.next64():016x}{rng.next64():016x}"
        s = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"
    else:
        s = _sentence(item, rng)
    if len(s) < lo:
        words = item.words
        while len(s) < lo:
            s = s + " " + words[rng.below(len(words))]
    if hi is not None and len(s) > hi:
        s = s[:hi]
        if len(s.rstrip()) >= lo:
            s = s.rstrip()
    return s


def _enum(node: tuple, item: Item, rng: Rng) -> Any:
    return node[1][rng.below(len(node[1]))]


def _integer(node: tuple, item: Item, rng: Rng) -> Any:
    v = rng.between(node[1], node[2])
    if node[3]:
        m = node[3]
        klo, khi = -(-node[1] // m), node[2] // m
        v = rng.between(klo, khi) * m if khi >= klo else v
    if len(node) > 4:  # number with multipleOf: k * m
        return v * node[4]
    return v


def _number(node: tuple, item: Item, rng: Rng) -> float:
    _, a, b, xlo, xhi = node
    v = round(a + rng.random() * (b - a), 2)
    if v < a or v > b or (xlo is not None and v <= xlo) or (xhi is not None and v >= xhi):
        v = (a + b) / 2.0
    return float(v)


def _boolean(node: tuple, item: Item, rng: Rng) -> bool:
    return rng.below(2) == 1


#: The kinds whose value is drawn by one function(node, item, rng), without sub-nodes.
_LEAVES = {STRING: _string, ENUM: _enum, INT: _integer, NUM: _number, BOOL: _boolean}


def generate(node: tuple, item: Item, path: str = "") -> Any:
    """A value valid against the compiled node, seeded by (item content, path)."""
    kind = node[0]
    if kind == OBJECT:
        return {name: generate(sub, item, f"{path}.{name}" if path else name) for name, sub in node[1]}
    if kind == CONST:
        return node[1]
    rng = Rng(item.key + path_suffix(path))
    if kind == CHOICE:
        return generate(node[1][rng.below(len(node[1]))], item, path)
    if kind == TYPES:
        _, nullable, nodes = node
        if nullable and (not nodes or rng.random() < _NULL_PROBABILITY):
            return None
        return generate(nodes[rng.below(len(nodes))], item, path) if nodes else None
    if kind == ARRAY:
        _, start, top, item_node, prefix, unique = node
        n = rng.between(start, top)
        out: List[Any] = []
        attempts = 0
        while len(out) < n and attempts < n * 4:
            sub = prefix[attempts] if attempts < len(prefix) else item_node
            v = generate(sub, item, f"{path}[{attempts}]")
            attempts += 1
            if unique and v in out:
                continue
            out.append(v)
        return out
    leaf = _LEAVES.get(kind)
    return leaf(node, item, rng) if leaf is not None else None


def node_generator(node: tuple, path: str = "") -> Callable[[Item], Any]:
    """`lambda item: generate(node, item, path)`, with the tree walk, the paths
    and their seed bytes worked out once per schema instead of once per record."""
    kind = node[0]
    if kind == OBJECT:
        # (name, leaf function, its node, seed suffix), or (name, None, generator, None):
        # leaf fields, most of a schema, are drawn in the loop (no call per field).
        fields = []
        for name, sub in node[1]:
            sub_path = f"{path}.{name}" if path else name
            leaf = _LEAVES.get(sub[0])
            fields.append((name, leaf, sub, path_suffix(sub_path)) if leaf is not None
                          else (name, None, node_generator(sub, sub_path), None))

        def obj(item: Item) -> Dict[str, Any]:
            key = item.key
            rng = new_rng(Rng)  # one rng, seeded afresh for each leaf field: no object per field
            out = {}
            for name, leaf, arg, suffix in fields:
                if leaf is None:
                    out[name] = arg(item)
                else:
                    rng.s = seed_state(key + suffix)
                    out[name] = leaf(arg, item, rng)
            return out
        return obj
    if kind == CONST:
        value = node[1]
        return lambda item: value
    if kind == ARRAY:  # its elements' paths hold their index: the general walk
        return lambda item: generate(node, item, path)
    suffix = path_suffix(path)
    if kind == CHOICE:
        options = [node_generator(sub, path) for sub in node[1]]
        return lambda item: options[Rng(item.key + suffix).below(len(options))](item)
    if kind == TYPES:
        _, nullable, nodes = node
        options = [node_generator(sub, path) for sub in nodes]

        def typed(item: Item) -> Any:
            rng = Rng(item.key + suffix)
            if nullable and (not options or rng.random() < _NULL_PROBABILITY):
                return None
            return options[rng.below(len(options))](item) if options else None
        return typed
    leaf = _LEAVES.get(kind)
    if leaf is None:
        return lambda item: None
    return lambda item: leaf(node, item, Rng(item.key + suffix))


def schema_generator(schema: Any) -> Callable[[Item], Any]:
    """The generator of a whole schema (cached by its JSON text, as compiled nodes are)."""
    return cached(b"G" + schema_key(schema), lambda: node_generator(compile_schema(schema)))
