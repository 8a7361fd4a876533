"""One object per process and key: the home of everything DoFns share.

DoFn instances come and go (the DirectRunner even calls setup() and
teardown() for every bundle), but a rate-limit budget, an API client, a
thread pool or an in-flight queue belongs to the worker process: built once
on first use, then handed to every DoFn instance and thread that names the
same key, for the life of the process.

Why not ``apache_beam.utils.shared.Shared``: see ``ratelimit.get_limiter``.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Hashable, TypeVar

__all__ = ["per_process"]

T = TypeVar("T")

_OBJECTS: Dict[Hashable, Any] = {}
_LOCK = threading.Lock()


def per_process(key: Hashable, factory: Callable[[], T]) -> T:
    """The process's object for ``key``, made by ``factory()`` on first use.

    The factory runs under the lock, so two threads asking at once never
    build two objects. Raises ValueError if the factory returns None (a
    registry entry must be the object itself, not a promise of one).
    """
    with _LOCK:
        obj = _OBJECTS.get(key)
        if obj is None:
            obj = factory()
            if obj is None:
                raise ValueError(f"factory for {key!r} returned None")
            _OBJECTS[key] = obj
        return obj
