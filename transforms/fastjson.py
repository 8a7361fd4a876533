"""orjson on the hot paths of the batch route, with the standard library's
exact behaviour wherever orjson would differ.

Used where the product reads or writes JSON once per record (the batch
results file, the ledger's requests file). orjson is several times faster;
where it refuses something the standard library accepts (NaN, integers over
64 bits, lone surrogates, non-string keys), these helpers fall back to `json`
so the result (or the error) is what it was before.
"""
from __future__ import annotations

import json
import json.encoder
from typing import Any, Callable, Iterable, Iterator, Optional

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is pinned in requirements.txt
    _orjson = None

__all__ = ["loads", "loads_if_compact", "NOT_COMPACT", "dumps_bytes", "dumps_sorted", "canonical_bytes",
           "jsonl_lines"]


def loads(data: bytes | str) -> Any:
    """json.loads(data), faster."""
    if _orjson is not None:
        try:
            return _orjson.loads(data)
        except _orjson.JSONDecodeError:
            pass  # let json accept what it accepts, or raise its own error
    return json.loads(data)


#: What loads_if_compact returns for text it leaves to the standard library.
NOT_COMPACT = object()


def loads_if_compact(text: str) -> Any:
    """The value of `text` if `text` is exactly orjson's compact form of that
    value, else NOT_COMPACT (never raises).

    For such text the value is the one a strict json.loads gives (no repeated
    keys, no NaN): orjson keeps the last of repeated keys and accepts what
    json would word differently, but then writing the value back cannot give
    the same text (a key is missing, an escape or a space differs). ~5x
    faster than json.loads with an object_pairs_hook.
    """
    if _orjson is None:
        return NOT_COMPACT
    try:
        value = _orjson.loads(text)
        if _orjson.dumps(value) == text.encode("utf-8"):
            return value
    except (ValueError, TypeError, UnicodeEncodeError):
        pass  # a lone surrogate, an integer over 64 bits, NaN, ...: not orjson's to decide
    return NOT_COMPACT


def dumps_bytes(value: Any, default: Optional[Callable[[Any], Any]] = None) -> bytes:
    """Compact JSON, non-ASCII kept, as UTF-8 bytes: equal in meaning to
    json.dumps(value, ensure_ascii=False, default=default).encode()."""
    if _orjson is not None:
        try:
            return _orjson.dumps(value, default=default)
        except TypeError:
            pass  # e.g. an int over 64 bits, a non-str key: the standard library decides
    return json.dumps(value, ensure_ascii=False, default=default, separators=(",", ":")).encode("utf-8")


#: The one ASCII character json's ensure_ascii escapes (as \\u007f) that orjson writes raw.
_DEL = b"\x7f"


def canonical_bytes(value: Any, ascii_only: bool = False) -> bytes:
    """json.dumps(value, ensure_ascii=ascii_only, separators=(",", ":")) as
    UTF-8 (lone surrogates passed through), byte for byte, for values of
    strings, integers, booleans, None and lists/tuples (not floats: their text
    differs). For hashes whose values are stored (custom_ids, pack_ids,
    ledger keys): orjson where it writes exactly those bytes, else json.

    orjson writes non-ASCII characters and DEL raw, as json does without
    ensure_ascii; with ascii_only its output is json's only when it is ASCII
    without DEL. It refuses lone surrogates and integers over 64 bits.
    """
    if _orjson is not None:
        try:
            line = _orjson.dumps(value)
        except TypeError:
            pass  # orjson.JSONEncodeError is a TypeError
        else:
            if not ascii_only or (line.isascii() and _DEL not in line):
                return line
    return json.dumps(value, ensure_ascii=ascii_only, separators=(",", ":")).encode("utf-8", "surrogatepass")


#: json.dumps(., ensure_ascii=False, sort_keys=True)'s C encoder, built once:
#: json.dumps builds one per call, with a dict for its cycle check (~1 us of
#: ~2). Values parsed from JSON text have no cycles to check. Arguments in
#: c_make_encoder's order: markers (None: no cycle check), default, string
#: encoder, indent, key and item separators, sort_keys, skipkeys, allow_nan.
#: None where the C accelerator is missing (then json.dumps itself is used).
_SORTED_ENCODER = (json.encoder.c_make_encoder(None, json.JSONEncoder().default, json.encoder.encode_basestring,
                                               None, ": ", ", ", True, False, True)
                   if json.encoder.c_make_encoder is not None else None)


def dumps_sorted(value: Any) -> str:
    """json.dumps(value, ensure_ascii=False, sort_keys=True) of a value parsed
    from JSON (no cycles, only JSON types), faster."""
    if _SORTED_ENCODER is None:
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return "".join(_SORTED_ENCODER(value, 0))


def jsonl_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The non-blank lines of a JSONL byte stream, split on b"\\n" only.

    Written by hand because httpx's iter_lines() (like str.splitlines) also
    ends a line at U+2028, U+2029 and U+0085, which JSON allows raw inside a
    string: an answer quoting such a character would be cut in two and fail
    to parse. Only the last, unfinished line is buffered.
    """
    tail = b""
    for chunk in chunks:
        if not chunk:
            continue
        lines = (tail + chunk).split(b"\n")
        tail = lines.pop()
        for line in lines:
            if line.strip():
                yield line
    if tail.strip():
        yield tail
