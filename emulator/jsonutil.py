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


def loads(data: bytes | str) -> Any:
    """Parse JSON text (bytes or str)."""
    if _orjson is not None:
        return _orjson.loads(data)
    return json.loads(data)


def dumps_bytes(value: Any) -> bytes:
    """Compact JSON as UTF-8 bytes."""
    if _orjson is not None:
        try:
            return _orjson.dumps(value)
        except TypeError:  # e.g. an int over 64 bits: fall back below
            pass
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def dumps(value: Any) -> str:
    """Compact JSON as text: the exact form the emulator's answers take."""
    return dumps_bytes(value).decode("utf-8")


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
