"""Parsing a batch create body whose requests repeat the same params values.

A pipeline's batch repeats its instructions and output schema in every
request: of a 256 MB body, ~240 MB are the same 9 KB of `system` and
`output_config`, 27,000 times over. `loads_batch_body` takes the bytes of the
first value of each such key, replaces every byte-identical repeat (right
after the same key) by a short placeholder, parses what is left (~6% of the
size, ~8x faster) and puts one parsed object back in each placeholder's
place. The result is what `jsonutil.loads` gives for the whole body (the same
JSON form), with the repeated values shared as one object; or the same error.

Why this is exact: a value is only replaced right after `"KEY":`. The quote
after KEY follows a letter, so it is not escaped, and it cannot open a string
(a bare letter is not JSON): it closes one, which the colon makes a key. So
wherever the body is valid up to it, what follows is that key's value, and
being the bytes of a complete JSON value, it is the whole value; replaced by
another complete value, the body parses as before, or fails as before at a
byte outside the replaced values. What this cannot vouch for falls back to
parsing the body as sent: a body that fails after the replacement (for its
own error message), a placeholder the body held itself, a replaced value that
is not a request's params value (the key was `a\"KEY`, or nested deeper).
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

from emulator import jsonutil
from emulator.batches import SHARED_KEYS

#: Shorter values are parsed where they stand: replacing them saves little.
MIN_SHARED_BYTES = 256
#: Longest value looked for: the head of the body decoded to find where it ends.
MAX_SHARED_BYTES = 1 << 20
#: Deeper values are parsed where they stand, so the parser's nesting limit
#: (1,024 levels for orjson) applies to them as sent; schemas are far shallower.
MAX_SHARED_DEPTH = 64
#: What a repeated value is replaced by: the JSON string of one NUL character.
#: It has no other spelling (`\u0000` has no upper-case form), so counting
#: these bytes tells whether the body held that string itself.
PLACEHOLDER = b'"\\u0000"'
_PLACEHOLDER_VALUE = "\x00"
#: First bytes of the values whose end is their closing bracket or quote
#: (not numbers: `1` is the start of `12`).
_SELF_DELIMITED = b'[{"'

Body = bytes | bytearray


def loads_batch_body(raw: Body) -> Any:
    """jsonutil.loads(raw), with each SHARED_KEYS value that repeats the first
    one's bytes parsed once and shared (see the module doc)."""
    text = raw
    shared: Dict[str, Any] = {}
    replaced = 0
    for key in SHARED_KEYS:
        found = _first_value(text, key)
        if found is None:
            continue
        needle, value = found
        text, count = _replace_repeats(text, key, needle)
        if count:
            shared[key] = value
            replaced += count
    if replaced and text.count(PLACEHOLDER) == replaced:
        try:
            body = jsonutil.loads(text)
        except ValueError:
            pass  # parsed again below, for the error the body as sent gets
        else:
            if _restore(body, shared) == replaced:
                return body
    return jsonutil.loads(raw)


def _key_at(text: Body, pattern: bytes, start: int) -> int:
    """Index just after the first PATTERN (`"KEY":`) at or after start, or -1."""
    i = text.find(pattern, start)
    return -1 if i == -1 else i + len(pattern)


def _pattern(key: str) -> bytes:
    return b'"' + key.encode() + b'":'


def _first_value(text: Body, key: str) -> Optional[Tuple[bytes, Any]]:
    """(bytes, parsed value) of the first value of `key`, if worth sharing."""
    at = _key_at(text, _pattern(key), 0)
    if at == -1 or at >= len(text) or text[at] not in _SELF_DELIMITED:
        return None
    head = bytes(text[at:at + MAX_SHARED_BYTES]).decode("utf-8", "surrogateescape")
    try:
        _, end = json.JSONDecoder().raw_decode(head)
    except (ValueError, RecursionError):  # not a value here, or one nested past Python's limit
        return None
    needle = head[:end].encode("utf-8", "surrogateescape")
    if len(needle) < MIN_SHARED_BYTES or PLACEHOLDER in needle:  # e.g. an earlier key's replaced value
        return None
    try:  # what the parser refuses (NaN, lone surrogates, ...) stays for it to refuse in place
        value = jsonutil.loads(needle)
    except ValueError:
        return None
    return (needle, value) if _depth(value) <= MAX_SHARED_DEPTH else None


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (0 for a scalar), without recursion."""
    deepest = 0
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is not None:
            depth += 1
            stack.extend((child, depth) for child in children)
        deepest = max(deepest, depth)
    return deepest


def _replace_repeats(text: Body, key: str, needle: bytes) -> Tuple[Body, int]:
    """(text with every value of `key` that is `needle` replaced by PLACEHOLDER, count)."""
    pattern = _pattern(key)
    view = memoryview(text)
    parts: List[Any] = []
    done = count = 0
    # One pass of _key_at()s, inlined (27,000 requests: ~1 us each saved)
    find, starts, size, width = text.find, text.startswith, len(pattern), len(needle)
    i = find(pattern)
    while i != -1:
        at = i + size  # just after `"KEY":`
        if starts(needle, at):
            parts += (view[done:at], PLACEHOLDER)
            done = at + width
            count += 1
            i = find(pattern, done)
        else:
            i = find(pattern, at)
    if not count:
        return text, 0
    parts.append(view[done:])
    return b"".join(parts), count


def _restore(body: Any, shared: Dict[str, Any]) -> int:
    """Put the shared values back in the requests' params; how many were put back."""
    requests = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(requests, list):
        return 0
    restored = 0
    for request in requests:
        params = request.get("params") if isinstance(request, dict) else None
        if not isinstance(params, dict):
            continue
        for key, value in shared.items():
            if params.get(key) == _PLACEHOLDER_VALUE:
                params[key] = value
                restored += 1
    return restored
