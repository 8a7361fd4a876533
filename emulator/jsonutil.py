"""Fast JSON helpers (orjson when installed, else the standard library) and a GC pause.

A 100,000-request batch body is tens of megabytes; orjson parses and writes it
several times faster than `json`, which keeps the emulator from being the
bottleneck of a benchmark. Both paths produce compact JSON with non-ASCII kept
as UTF-8, so answers are byte-identical whichever one is used.
"""
from __future__ import annotations

import contextlib
import gc
import json
from typing import Any, Iterator

try:  # pragma: no cover - exercised implicitly
    import orjson as _orjson
except ImportError:  # pragma: no cover
    _orjson = None

#: The standard library's compact writer, non-ASCII kept: the form orjson writes.
_compact_text = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

__all__ = ["dumps", "dumps_bytes", "gc_paused", "loads"]


def loads(data: bytes | str) -> Any:
    """Parse JSON text (bytes or str). What orjson refuses (NaN, ...) is an
    error here, as it is for the API: no second try with the standard library."""
    if _orjson is not None:
        return _orjson.loads(data)
    return json.loads(data)


def dumps_bytes(value: Any) -> bytes:
    """Compact JSON, non-ASCII kept, as UTF-8 bytes (a response body, a batch
    result line). orjson when it can write the value; what it refuses (an int
    over 64 bits, a non-str key, ...) the standard library writes."""
    if _orjson is None:
        return _compact_text(value).encode("utf-8")
    try:
        return _orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return _compact_text(value).encode("utf-8")


def dumps(value: Any) -> str:
    """Compact JSON as text: the exact form the emulator's answers take."""
    if _orjson is not None:
        try:  # what dumps_bytes tries first, without its call (once per answer)
            return _orjson.dumps(value).decode("utf-8")
        except TypeError:
            pass
    return dumps_bytes(value).decode("utf-8")  # (a lone surrogate fails here, as in orjson)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (process-wide) for a short CPU burst.

    Parsing or answering thousands of requests allocates millions of
    short-lived, acyclic objects (freed by reference counting anyway); letting
    the cyclic collector walk the heap meanwhile makes that 2-5x slower.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
