"""A shorter GIL switch interval while background I/O threads are busy.

A thread that streams a batch body to a socket gives up the GIL around every
partial send() and must win it back before the next one. With CPython's
default 5 ms switch interval and a busy main thread, each of the ~1,000
partial sends of a 256 MB body waits up to 5 ms for the GIL: a create that
takes 1.5 s alone took 5.8 s next to a busy bundle (measured, see
docs/benchmarks.md). No library exposes this knob more narrowly than `sys`, so
the interval is lowered only while such a thread runs, and process-wide users
are counted so that concurrent DoFn instances restore it exactly once.
"""
from __future__ import annotations

import sys
import threading

#: While background sends run: short enough that a send waits ~0.5 ms for the
#: GIL, long enough that the main thread is not forced to drop it needlessly.
IO_SWITCH_INTERVAL_S = 0.0005

_lock = threading.Lock()
_users = 0
_saved = None


def acquire() -> None:
    """Lower the switch interval (first user saves the current one)."""
    global _users, _saved
    with _lock:
        if _users == 0:
            _saved = sys.getswitchinterval()
            if _saved > IO_SWITCH_INTERVAL_S:
                sys.setswitchinterval(IO_SWITCH_INTERVAL_S)
        _users += 1


def release() -> None:
    """Undo one acquire(); the last user restores the saved interval."""
    global _users, _saved
    with _lock:
        if _users == 0:
            return
        _users -= 1
        if _users == 0 and _saved is not None:
            sys.setswitchinterval(_saved)
            _saved = None
