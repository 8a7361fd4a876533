"""Deterministic answers: what the emulated model says, and why it is stable.

Contract with the pipeline (see docs/architecture.md):

* The user message holds one record as ``<item id="ID">CONTENT</item>`` or a
  pack ``<items_to_process> <item id="ID" n="N">...</item> ...
  </items_to_process>``; ids and content are XML-escaped, N is the item's
  number. No item tag: the whole message is one anonymous item.
* A pack element names its item by the key its item schema declares: ``n``
  (the pipeline's packs: the item's number) or ``id`` (the item's id, for
  clients that ask for it). Faults and stats always work on item ids.
* Every generated value is seeded by ``sha256(html.unescape(CONTENT).strip())``
  and by the value's *path* in the schema (``label``, ``tags[0]``,
  ``address.city``), never by the item's id or position. So the same record
  gets the same answer alone, in a pack, in a batch, and in any order: the
  object a pack returns for an item equals, field for field, what a single
  request with the task's schema returns for it (plus its key).
* With ``output_config.format`` = json_schema: compact JSON valid against the
  schema (subset: object/properties/required/additionalProperties, string
  enum/minLength/maxLength/format, number/integer minimum/maximum/exclusive*/
  multipleOf, boolean, array items/minItems/maxItems, null and type lists,
  const, enum, anyOf/oneOf, allOf, local $ref). ``pattern`` is not honoured.
* Without a schema: a short sentence (single) or
  ``{"results":[{"id":ID,"output":SENTENCE},...]}`` (pack). A pack whose
  item schema is exactly {key, output: string} (the pipeline's free-text pack)
  also gets SENTENCE as output, so free text agrees across modes too.
* Output tokens = tokenizer.count_text(text); over max_tokens the text is cut to
  max_tokens*4 bytes and stop_reason is "max_tokens".

`expected_output(content, schema)` gives a test the answer for one record.
"""
from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import math
import re
import struct
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from emulator import jsonutil
from emulator.memo import IdentityMemo
from emulator.tokenizer import count_text

ITEM_RE = re.compile(r'<item id="([^"]*)"(?: n="([0-9]+)")?>(.*?)</item>', re.S)
PACK_MARK = "<items_to_process>"
_PUNCT = ".,;:!?\"()[]{}<>«»“”‘’*_`~|/\\#=+&"
#: The definition of an item's words: its first 240 characters, these
#: punctuation marks read as spaces, split on whitespace, at most 30.
_PUNCT_TO_SPACE = str.maketrans({c: " " for c in _PUNCT})
#: The same mapping for ASCII text as a bytes table: bytes.translate is ~5x
#: faster than str.translate with a dict (which looks up every character).
_ASCII_PUNCT_TO_SPACE = bytes.maketrans(
    bytes(ord(c) for c in _PUNCT if c.isascii()), b" " * sum(c.isascii() for c in _PUNCT))
#: ...and for other text the same table on its UTF-8 bytes (ASCII bytes are ASCII
#: characters there), then str.replace of these few (~15% faster than a regex).
_NON_ASCII_PUNCT = tuple(c for c in _PUNCT if not c.isascii())
_WORDS_PREFIX = 240
_MAX_WORDS = 30
_FILLER = ("the", "record", "describes", "a", "short", "plain", "note", "about", "its", "content")
_NULL_PROBABILITY = 0.2
_MAX_DEPTH = 12


# ---------------------------------------------------------------- parsing

@dataclasses.dataclass
class Item:
    """One record found in a prompt. id None = anonymous (no item tag)."""

    id: Optional[str]
    content: str
    _key: Optional[bytes] = None
    _words: Optional[List[str]] = None
    n: Optional[int] = None   # the item's number in its pack (`n` attribute), if given

    @property
    def key(self) -> bytes:
        """sha256 of the content: the seed of everything answered about it."""
        if self._key is None:
            self._key = content_key(self.content)
        return self._key

    @property
    def words(self) -> List[str]:
        if self._words is None:
            self._words = content_words(self.content) or list(_FILLER)
        return self._words


def content_words(content: str) -> List[str]:
    """content[:240].translate(_PUNCT_TO_SPACE).split()[:30], computed faster."""
    head = content[:_WORDS_PREFIX]
    if head.isascii():
        spaced = head.encode("ascii").translate(_ASCII_PUNCT_TO_SPACE).decode("ascii")
    else:
        spaced = head.encode("utf-8", "surrogatepass").translate(_ASCII_PUNCT_TO_SPACE).decode(
            "utf-8", "surrogatepass")
        for mark in _NON_ASCII_PUNCT:
            if mark in spaced:
                spaced = spaced.replace(mark, " ")
    # maxsplit: the first 30 words as split() has them, the rest (if any) left as one string
    words = spaced.split(None, _MAX_WORDS)
    if len(words) > _MAX_WORDS:
        del words[_MAX_WORDS]
    return words


def content_key(content: str) -> bytes:
    return hashlib.sha256(content.encode("utf-8", "surrogatepass")).digest()


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
    return "".join(parts)


def user_text(params: Mapping[str, Any]) -> str:
    """Text of the last user message (where the pipeline puts the records)."""
    messages = params.get("messages")
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role", "user") == "user":
            return _text_of(message.get("content"))
    return ""


_OPEN = '<item id="'
_N_ATTR = ' n="'
_CLOSE = "</item>"


def _find_items(text: str, limit: Optional[int] = None) -> List[Tuple[str, Optional[int], str]]:
    """(raw id, n or None, raw content) of each `<item id="ID"[ n="N"]>CONTENT</item>`:
    what ITEM_RE.findall gives (its first `limit` ones), with str.find (3x faster)."""
    out: List[Tuple[str, Optional[int], str]] = []
    find = text.find
    i = find(_OPEN)
    while i != -1:
        q = find('"', i + 10)
        if q == -1:
            break
        n, end = _n_attribute(text, q + 1)
        if end is None:
            i = find(_OPEN, i + 1)
            continue
        k = find(_CLOSE, end)
        if k == -1:
            break
        out.append((text[i + 10:q], n, text[end:k]))
        if len(out) == limit:
            break
        i = find(_OPEN, k + 7)
    return out


def _n_attribute(text: str, at: int) -> Tuple[Optional[int], Optional[int]]:
    """(n, index after the tag's ">") for `>` or ` n="123">` at `at`; end None if neither."""
    if text.startswith(">", at):
        return None, at + 1
    if text.startswith(_N_ATTR, at):
        start = at + len(_N_ATTR)
        q = text.find('">', start)
        digits = text[start:q] if q != -1 else ""
        if digits.isascii() and digits.isdigit():
            return int(digits), q + 2
    return None, None


def parse_items(text: str) -> Tuple[bool, List[Item]]:
    """(is_pack, items). A pack needs the <items_to_process> wrapper."""
    is_pack = PACK_MARK in text
    found = _find_items(text, None if is_pack else 1)  # not a pack: its first item only
    if not found:
        return False, [Item(None, text.strip())]
    unescape = html.unescape
    return is_pack, [Item(unescape(i), unescape(c).strip(), n=n) for i, n, c in found]


def output_schema(params: Mapping[str, Any]) -> Optional[Any]:
    """The json_schema of output_config.format, if any."""
    return _schema_of(params.get("output_config"))


def _schema_of(oc: Any) -> Optional[Any]:
    """output_schema of params whose output_config is `oc`."""
    if not isinstance(oc, dict):
        return None
    fmt = oc.get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        return fmt.get("schema")
    return None


# ---------------------------------------------------------------- generator

#: An empty blake2b state of 8-byte digests, copied to seed each value's rng.
_BLAKE2B_8 = hashlib.blake2b(digest_size=8)
_BIG_ENDIAN_U64 = struct.Struct(">Q").unpack


def _seed(seed: bytes) -> int:
    """The rng state for seed bytes: the content key + _path_suffix(path)."""
    h = _BLAKE2B_8.copy()  # copying a fresh state is ~1.5x cheaper than making one
    h.update(seed)
    return _BIG_ENDIAN_U64(h.digest())[0]  # int.from_bytes(digest, "big"), cheaper


class _Rng:
    """splitmix64 seeded by (content key, path): tiny, fast, stable forever."""

    __slots__ = ("s",)

    def __init__(self, seed: bytes):
        """seed: the content key + _path_suffix(path) (a generator holds the suffix ready)."""
        self.s = _seed(seed)

    def next64(self) -> int:
        # The masks are literals (2**64 - 1): a constant loads faster than a global.
        z = self.s = (self.s + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        return z ^ (z >> 31)

    def random(self) -> float:
        return (self.next64() >> 11) / 9007199254740992.0  # float(1 << 53)

    def below(self, n: int) -> int:
        if n <= 0:
            return 0
        # next64() inlined: below() is most of the draws of an answer
        z = self.s = (self.s + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        return (z ^ (z >> 31)) % n

    def between(self, lo: int, hi: int) -> int:
        return lo + self.below(hi - lo + 1) if hi >= lo else lo


#: An _Rng without __init__ (generators set its state themselves).
_new_rng = object.__new__


def _path_suffix(path: str) -> bytes:
    """What follows the content key in the seed of the value at `path`."""
    return b"\x00" + path.encode("utf-8", "surrogatepass")


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
# schema (not once per record) keeps a 100,000-request batch cheap.
_CONST, _ENUM, _CHOICE, _TYPES, _OBJECT, _ARRAY, _STRING, _INT, _NUM, _BOOL, _NULL = range(11)
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


def _compile(schema: Any, root: Any, depth: int) -> tuple:
    schema = resolve(schema, root)
    if isinstance(schema, dict):
        schema = _described_constraints(schema)
    if schema is True or not isinstance(schema, dict):
        return (_STRING, None, 0, None)
    if "const" in schema:
        return (_CONST, schema["const"])
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return (_ENUM, list(schema["enum"]))
    typ = schema.get("type")
    if depth >= _MAX_DEPTH:
        t = typ if isinstance(typ, str) else (typ[0] if isinstance(typ, list) and typ else _infer_type(schema))
        return (_CONST, _DEFAULTS.get(t))
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            base = {k: v for k, v in schema.items() if k != key}
            nodes = []
            for option in options:
                option = resolve(option, root)
                nodes.append(_compile({**base, **option} if isinstance(option, dict) else option, root, depth + 1))
            return (_CHOICE, nodes)
    if isinstance(typ, list):
        non_null = [t for t in typ if t != "null"]
        return (_TYPES, "null" in typ, [_compile({**schema, "type": t}, root, depth + 1) for t in non_null])
    if typ is None:
        typ = _infer_type(schema)
    if typ == "object":
        entries = []
        props = schema.get("properties")
        if isinstance(props, dict):
            entries = [(name, _compile(sub, root, depth + 1)) for name, sub in props.items()]
        names = {n for n, _ in entries}
        for name in schema.get("required") or ():
            if name not in names:
                entries.append((name, (_STRING, None, 0, None)))
                names.add(name)
        return (_OBJECT, entries)
    if typ == "array":
        lo = int(schema.get("minItems", 0) or 0)
        hi = schema.get("maxItems")
        start = max(lo, 1)
        top = start + 2 if hi is None else min(int(hi), start + 2)
        if hi is not None and int(hi) < start:
            start = top = max(lo, int(hi))
        prefix = schema.get("prefixItems") if isinstance(schema.get("prefixItems"), list) else []
        return (_ARRAY, start, top, _compile(schema.get("items", {}), root, depth + 1),
                [_compile(p, root, depth + 1) for p in prefix], bool(schema.get("uniqueItems")))
    if typ == "string":
        hi = schema.get("maxLength")
        return (_STRING, schema.get("format"), int(schema.get("minLength", 0) or 0),
                int(hi) if hi is not None else None)
    if typ == "integer":
        lo, hi = _int_range(*_bounds(schema))
        m = schema.get("multipleOf")
        return (_INT, lo, hi, m if isinstance(m, int) and not isinstance(m, bool) and m > 0 else None)
    if typ == "number":
        lo, hi, xlo, xhi = _bounds(schema)
        m = schema.get("multipleOf")
        if isinstance(m, (int, float)) and not isinstance(m, bool) and m > 0:
            klo, khi = _int_range(*(None if v is None else v / m for v in (lo, hi, xlo, xhi)))
            return (_INT, klo, khi, None, m)
        a, b = _close_open_ends(lo if lo is not None else xlo, hi if hi is not None else xhi, 0.0)
        return (_NUM, float(a), float(b), xlo, xhi)
    if typ == "boolean":
        return (_BOOL,)
    if typ == "null":
        return (_CONST, None)
    return (_STRING, None, 0, None)


_COMPILED: Dict[bytes, Any] = {}


def _cached(key: bytes, build):
    hit = _COMPILED.get(key)
    if hit is None:
        if len(_COMPILED) > 512:
            _COMPILED.clear()
        hit = _COMPILED[key] = build()
    return hit


def _schema_key(schema: Any) -> bytes:
    try:
        return jsonutil.dumps_bytes(schema)
    except Exception:
        return repr(schema).encode()


def compile_schema(schema: Any) -> tuple:
    """The compiled node of a whole schema (cached by its JSON text)."""
    return _cached(b"S" + _schema_key(schema), lambda: _compile(schema, schema, 0))


def _sentence(item: Item, rng: _Rng, lo: int = 3, hi: int = 8) -> str:
    words = item.words
    n = lo + rng.below(hi - lo + 1) if hi >= lo else lo  # rng.between(lo, hi), one call less
    if len(words) >= n:
        start = rng.below(len(words) - n + 1)
        picked = words[start:start + n]
    else:
        picked = words + list(_FILLER[: n - len(words)])
    text = " ".join(picked)
    return text[:1].upper() + text[1:] + "."


def _string(node: tuple, item: Item, rng: _Rng) -> str:
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


def _enum(node: tuple, item: Item, rng: _Rng) -> Any:
    return node[1][rng.below(len(node[1]))]


def _integer(node: tuple, item: Item, rng: _Rng) -> Any:
    v = rng.between(node[1], node[2])
    if node[3]:
        m = node[3]
        klo, khi = -(-node[1] // m), node[2] // m
        v = rng.between(klo, khi) * m if khi >= klo else v
    if len(node) > 4:  # number with multipleOf: k * m
        return v * node[4]
    return v


def _number(node: tuple, item: Item, rng: _Rng) -> float:
    _, a, b, xlo, xhi = node
    v = round(a + rng.random() * (b - a), 2)
    if v < a or v > b or (xlo is not None and v <= xlo) or (xhi is not None and v >= xhi):
        v = (a + b) / 2.0
    return float(v)


def _boolean(node: tuple, item: Item, rng: _Rng) -> bool:
    return rng.below(2) == 1


#: The kinds whose value is drawn by one function(node, item, rng), without sub-nodes.
_LEAVES = {_STRING: _string, _ENUM: _enum, _INT: _integer, _NUM: _number, _BOOL: _boolean}


def generate(node: tuple, item: Item, path: str = "") -> Any:
    """A value valid against the compiled node, seeded by (item content, path)."""
    kind = node[0]
    if kind == _OBJECT:
        return {name: generate(sub, item, f"{path}.{name}" if path else name) for name, sub in node[1]}
    if kind == _CONST:
        return node[1]
    rng = _Rng(item.key + _path_suffix(path))
    if kind == _CHOICE:
        return generate(node[1][rng.below(len(node[1]))], item, path)
    if kind == _TYPES:
        _, nullable, nodes = node
        if nullable and (not nodes or rng.random() < _NULL_PROBABILITY):
            return None
        return generate(nodes[rng.below(len(nodes))], item, path) if nodes else None
    if kind == _ARRAY:
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


def _generator(node: tuple, path: str = "") -> Callable[[Item], Any]:
    """`lambda item: generate(node, item, path)`, with the tree walk, the paths
    and their seed bytes worked out once per schema instead of once per record."""
    kind = node[0]
    if kind == _OBJECT:
        # (name, leaf function, its node, seed suffix), or (name, None, generator, None):
        # leaf fields, most of a schema, are drawn in the loop (no call per field).
        fields = []
        for name, sub in node[1]:
            sub_path = f"{path}.{name}" if path else name
            leaf = _LEAVES.get(sub[0])
            fields.append((name, leaf, sub, _path_suffix(sub_path)) if leaf is not None
                          else (name, None, _generator(sub, sub_path), None))

        def obj(item: Item) -> Dict[str, Any]:
            key = item.key
            rng = _new_rng(_Rng)  # one rng, seeded afresh for each leaf field: no object per field
            out = {}
            for name, leaf, arg, suffix in fields:
                if leaf is None:
                    out[name] = arg(item)
                else:
                    rng.s = _seed(key + suffix)
                    out[name] = leaf(arg, item, rng)
            return out
        return obj
    if kind == _CONST:
        value = node[1]
        return lambda item: value
    if kind == _ARRAY:  # its elements' paths hold their index: the general walk
        return lambda item: generate(node, item, path)
    suffix = _path_suffix(path)
    if kind == _CHOICE:
        options = [_generator(sub, path) for sub in node[1]]
        return lambda item: options[_Rng(item.key + suffix).below(len(options))](item)
    if kind == _TYPES:
        _, nullable, nodes = node
        options = [_generator(sub, path) for sub in nodes]

        def typed(item: Item) -> Any:
            rng = _Rng(item.key + suffix)
            if nullable and (not options or rng.random() < _NULL_PROBABILITY):
                return None
            return options[rng.below(len(options))](item) if options else None
        return typed
    leaf = _LEAVES.get(kind)
    if leaf is None:
        return lambda item: None
    return lambda item: leaf(node, item, _Rng(item.key + suffix))


def schema_generator(schema: Any) -> Callable[[Item], Any]:
    """The generator of a whole schema (cached by its JSON text, as compiled nodes are)."""
    return _cached(b"G" + _schema_key(schema), lambda: _generator(compile_schema(schema)))


# ---------------------------------------------------------------- answers

def plain_answer(item: Item) -> str:
    """The no-schema answer for one record: a short, stable sentence."""
    snippet = " ".join(item.words[:10])
    return f"Summary of the item: {snippet} [{item.key.hex()[:8]}]."


def single_answer_value(item: Item, schema: Any) -> Any:
    """The value a single request returns (None schema -> the sentence)."""
    if schema is None:
        return plain_answer(item)
    return schema_generator(schema)(item)


def expected_output(content: str, schema: Any = None) -> Any:
    """What a single request answers for a record with this (unescaped) content.

    A pack answers the same fields for the same content (plus its key);
    without a schema a pack element is {"id": ID, "output": expected_output(content)}.
    """
    return single_answer_value(Item("x", content.strip()), schema)


_PLAIN = (_STRING, "plain-answer", 0, None)


#: Answer keys a pack's item schema may declare, in order of preference: the
#: item's number `n` (what the pipeline asks for) or its `id`.
ANSWER_KEYS = ("n", "id")


class PackPlan:
    """How to answer one pack element: the item schema, its compiled fields, its key."""

    def __init__(self, item_schema: Optional[Dict[str, Any]], entries: Optional[List[Tuple[str, Any]]],
                 key: str = "id"):
        self.item_schema = item_schema
        self.entries = entries  # [(name, node)], node None for the key; None = no schema
        self.key = key
        # (name, node, generator of the field's value): generators built once per schema
        self.fields = [(name, sub, None if sub is None or sub is _PLAIN else _generator(sub, name))
                       for name, sub in entries or ()]


def pack_item_schema(schema: Any) -> Optional[Dict[str, Any]]:
    """ITEM of {"properties":{"results":{"type":"array","items":ITEM}}}, else None."""
    if not isinstance(schema, dict):
        return None
    root = resolve(schema, schema)
    results = (root.get("properties") or {}).get("results") if isinstance(root, dict) else None
    results = resolve(results, schema)
    if not isinstance(results, dict):
        return None
    items = resolve(results.get("items"), schema)
    return items if isinstance(items, dict) else None


def pack_plan(schema: Any) -> Optional[PackPlan]:
    """The plan for a pack's schema (None schema -> plain outputs; None = not a pack shape)."""
    if schema is None:
        return PackPlan(None, None)

    def build() -> Optional[PackPlan]:
        item_schema = pack_item_schema(schema)
        if item_schema is None:
            return None
        node = _compile(item_schema, schema, 0)
        entries = list(node[1]) if node[0] == _OBJECT else []
        names = {name for name, _ in entries}
        key = next((k for k in ANSWER_KEYS if k in names), "id")
        entries = [(name, None if name == key else sub) for name, sub in entries]
        if key not in names:
            entries.insert(0, (key, None))
        if {name for name, _ in entries} == {key, "output"} and dict(entries)["output"][0] == _STRING:
            # The pipeline's free-text pack {key,"output"}: answer what a single
            # no-schema request answers, so every mode agrees.
            entries = [(name, _PLAIN if name == "output" else sub) for name, sub in entries]
        return PackPlan(item_schema, entries, key)

    return _cached(b"P" + _schema_key(schema), build)


def pack_element(item: Item, plan: PackPlan, position: int, salt: str = "") -> Dict[str, Any]:
    """One object of a pack's results: the item's fields (as a single answer has
    them) plus its key: its `n` (else its 1-based position) or its id."""
    seeded = item if not salt else Item(item.id, item.content + salt)
    if plan.entries is None:
        return {"id": item.id, "output": plain_answer(seeded)}
    key = (item.n if item.n is not None else position) if plan.key == "n" else item.id
    return {name: (key if sub is None else plain_answer(seeded) if sub is _PLAIN
                   else gen(seeded)) for name, sub, gen in plan.fields}


def _violate(obj: Dict[str, Any], item_schema: Optional[Dict[str, Any]], root: Any, key: str) -> None:
    """Make obj invalid against the item schema (pack_ignore_schema), its key untouched."""
    if item_schema is None:
        obj.pop("output", None)
        return
    for name in item_schema.get("required") or ():
        if name != key and name in obj:
            del obj[name]
            return
    props = item_schema.get("properties") or {}
    for name, sub in props.items():
        sub = resolve(sub, root)
        if name != key and isinstance(sub, dict) and isinstance(sub.get("enum"), list):
            obj[name] = "__not_in_enum__" if "__not_in_enum__" not in sub["enum"] else 123456789
            return
    wrong = {"string": 12345, "integer": "not a number", "number": "not a number",
             "boolean": "maybe", "array": "not an array", "object": "not an object"}
    for name, sub in props.items():
        sub = resolve(sub, root)
        if name != key and isinstance(sub, dict) and isinstance(sub.get("type"), str) \
                and sub["type"] in wrong:
            obj[name] = wrong[sub["type"]]
            return
    obj["unexpected_field_from_emulator"] = True  # only invalid with additionalProperties false


@dataclasses.dataclass
class Answer:
    """The assistant's text and which item ids it validly answers."""

    text: str
    stop_reason: str
    output_tokens: int
    ids: List[str]            # every item id in the request (with repeats)
    answered_ids: List[str]   # ids with a complete, valid answer
    faults: List[str]         # names of the pack faults that fired


def truncate_to_tokens(text: str, max_tokens: int) -> str:
    """At most max_tokens*4 UTF-8 bytes, cut on a character boundary."""
    return text.encode("utf-8", "surrogatepass")[: max_tokens * 4].decode("utf-8", "ignore")


_UNSET: Any = object()


class _Answering:
    """How requests with one output_config value are answered: its schema, and
    that schema's single-answer generator and pack plan, each found on first use."""

    __slots__ = ("schema", "_single", "_pack")

    def __init__(self, output_config: Any):
        self.schema = _schema_of(output_config)
        self._single = self._pack = _UNSET

    def single(self) -> Callable[[Item], Any]:
        """schema_generator(schema), for a schema that is not None."""
        if self._single is _UNSET:
            self._single = schema_generator(self.schema)
        return self._single

    def pack(self) -> Optional[PackPlan]:
        """pack_plan(schema)."""
        if self._pack is _UNSET:
            self._pack = pack_plan(self.schema)
        return self._pack


#: By output_config object: a batch's requests share one (BatchStore.create), so
#: its schema is looked up, and its generator or pack plan found, once per batch.
_answering = IdentityMemo(_Answering)


def build_answer(params: Mapping[str, Any], is_pack: bool, items: List[Item], faults=None,
                 ids: Optional[List[str]] = None) -> Answer:
    """The answer to a validated Messages request (pack faults applied).

    ids: the items' ids (not None), if the caller has them already.
    """
    if ids is None:
        ids = [it.id for it in items if it.id is not None]
    if not is_pack:
        text, stop, out_tokens = single_answer(params, items[0])
        return Answer(text, stop, out_tokens, ids, [] if stop == "max_tokens" else list(ids), [])
    answering = _answering(params.get("output_config"))
    schema = answering.schema
    max_tokens = int(params.get("max_tokens") or 1)
    fired: List[str] = []
    answered: List[str]
    plan = answering.pack()
    if plan is None:
        # Not the pipeline's pack shape: answer the schema as a whole.
        whole = Item(None, "\n".join(it.content for it in items))
        text = jsonutil.dumps(single_answer_value(whole, schema))
        return _finish(text, "end_turn", max_tokens, ids, list(ids), fired)
    # (item id, answer object): faults pick items by id, whatever key answers carry.
    elements = [(it.id, pack_element(it, plan, pos)) for pos, it in enumerate(items, start=1)]
    corrupted = set()
    if faults:
        spec = faults.fire("pack_drop_ids", ids)
        if spec:
            fired.append(spec.name)
            drop = set(faults.choose(spec, ids))
            elements = [(i, e) for i, e in elements if i not in drop]
            corrupted |= drop
        spec = faults.fire("pack_duplicate_ids", ids)
        if spec:
            fired.append(spec.name)
            chosen = set(faults.choose(spec, ids))
            elements += [(it.id, pack_element(it, plan, pos, salt="#duplicate"))
                         for pos, it in enumerate(items, start=1) if it.id in chosen]
            corrupted |= chosen
        spec = faults.fire("pack_invent_ids", ids)
        if spec:
            fired.append(spec.name)
            for j in range(int(spec.opt("count") or 1)):
                seed_item = items[j % len(items)]
                # A number past the pack's last item, and an id no item has.
                fake = Item(f"invented-{seed_item.key.hex()[:6]}-{spec.fired}-{j}",
                            seed_item.content + f"#invented{j}", n=len(items) + 1 + j)
                elements.append((fake.id, pack_element(fake, plan, fake.n)))
        spec = faults.fire("pack_ignore_schema", ids)
        if spec:
            fired.append(spec.name)
            chosen = set(faults.choose(spec, ids))
            for i, e in elements:
                if i in chosen:
                    _violate(e, plan.item_schema, schema, plan.key)
            corrupted |= chosen
    text = jsonutil.dumps({"results": [e for _, e in elements]})
    answered = [i for i in ids if i not in corrupted]
    stop = "end_turn"
    if faults:
        if faults.fire("pack_invalid_json", ids):
            fired.append("pack_invalid_json")
            text = text[:-1] + ',"'
            answered = []
        if faults.fire("pack_max_tokens", ids):
            fired.append("pack_max_tokens")
            text = truncate_to_tokens(text, max(1, count_text(text) // 2))
            answered = []
            stop = "max_tokens"
    return _finish(text, stop, max_tokens, ids, answered, fired)


def single_answer(params: Mapping[str, Any], item: Item) -> Tuple[str, str, int]:
    """(text, stop_reason, output_tokens) of a validated request holding one record
    (not a pack): build_answer's answer, without the Answer (see Engine.answer_single)."""
    answering = _answering(params.get("output_config"))
    max_tokens = int(params.get("max_tokens") or 1)
    text = plain_answer(item) if answering.schema is None else jsonutil.dumps(answering.single()(item))
    return _fit(text, "end_turn", max_tokens)


def _fit(text: str, stop: str, max_tokens: int) -> Tuple[str, str, int]:
    """(text, stop, output tokens), the text cut to max_tokens (stop "max_tokens") if over."""
    out_tokens = count_text(text)
    if out_tokens > max_tokens:
        text = truncate_to_tokens(text, max_tokens)
        out_tokens = count_text(text)
        stop = "max_tokens"
    return text, stop, out_tokens


def _finish(text: str, stop: str, max_tokens: int, ids: List[str], answered: List[str],
            fired: List[str]) -> Answer:
    text, stop, out_tokens = _fit(text, stop, max_tokens)
    if stop == "max_tokens":
        answered = []
    return Answer(text, stop, out_tokens, ids, answered, fired)
