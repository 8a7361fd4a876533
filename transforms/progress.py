"""Live progress of a DirectRunner job: process-wide counters the DoFns bump
and a line the entry point redraws in place (Beam's own metrics are only
readable once the pipeline has finished)."""
from __future__ import annotations

import sys
import threading
import time
from typing import Dict, Optional, TextIO

_LOCK = threading.Lock()
_COUNTS: Dict[str, float] = {}

#: Redraw period: often enough to feel live, rarely enough not to cost anything.
REFRESH_S = 1.0


def add(name: str, amount: float = 1) -> None:
    with _LOCK:
        _COUNTS[name] = _COUNTS.get(name, 0) + amount


def snapshot() -> Dict[str, float]:
    with _LOCK:
        return dict(_COUNTS)


def reset() -> None:
    with _LOCK:
        _COUNTS.clear()


def render(counts: Dict[str, float], elapsed_s: float) -> str:
    return (f"[{elapsed_s:6.0f}s] submitted {int(counts.get('submitted', 0)):,}  "
            f"answered {int(counts.get('answered', 0)):,}  "
            f"batches in progress {int(counts.get('batches_open', 0)):,}  "
            f"cost so far ${counts.get('cost_usd', 0.0):.4f}"
            + (f"  shed {int(counts['shed']):,}" if counts.get("shed") else ""))


class ProgressLine:
    """Redraws one status line on a terminal (carriage return, no log spam);
    prints nothing when the stream is not a terminal."""

    def __init__(self, stream: Optional[TextIO] = None):
        self._stream = stream or sys.stderr
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._started = time.monotonic()

    def __enter__(self) -> "ProgressLine":
        reset()
        if self._stream.isatty():
            self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(REFRESH_S):
            line = render(snapshot(), time.monotonic() - self._started)
            self._stream.write("\r" + line + "\x1b[K")
            self._stream.flush()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
            self._stream.write("\r\x1b[K")
            self._stream.flush()
