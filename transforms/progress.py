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

#: Redraw period on a terminal: often enough to feel live, rarely enough not to cost anything.
REFRESH_S = 1.0
#: Period of the progress lines written when the stream is not a terminal (a
#: log file, a scheduler's capture): a line every half minute, not a flood.
LOG_EVERY_S = 30.0


def add(name: str, amount: float = 1) -> None:
    with _LOCK:
        _COUNTS[name] = _COUNTS.get(name, 0) + amount


def snapshot() -> Dict[str, float]:
    with _LOCK:
        return dict(_COUNTS)


def reset() -> None:
    with _LOCK:
        _COUNTS.clear()


def format_duration(seconds: Optional[float]) -> str:
    """42 s, 7.5 min, 3.2 h, 1.5 d: a duration as a person reads it (the
    progress line's ETA and the plan's wall times)."""
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def render(counts: Dict[str, float], elapsed_s: float, total: Optional[int] = None) -> str:
    """One status line: done (of the total, when known), rate, ETA, cost so far."""
    answered = int(counts.get("answered", 0))
    done = f"answered {answered:,}"
    rate = answered / elapsed_s if elapsed_s > 0 else 0.0
    eta = ""
    if total:
        done += f" / {total:,} ({min(answered / total, 1.0):.0%})"
        if 0 < answered < total and rate > 0:
            eta = f"  ETA {format_duration((total - answered) / rate)}"
    return (f"[{elapsed_s:6.0f}s] {done}  {rate:,.1f}/s{eta}  "
            f"submitted {int(counts.get('submitted', 0)):,}  "
            f"batches in progress {int(counts.get('batches_open', 0)):,}  "
            f"cost so far ${counts.get('cost_usd', 0.0):.4f}"
            + (f"  shed {int(counts['shed']):,}" if counts.get("shed") else ""))


class ProgressLine:
    """Progress while a job runs: one line redrawn in place on a terminal, or a
    plain line every LOG_EVERY_S seconds when the stream is not one (so a run
    under a log redirect or a scheduler is never silent for minutes).
    `total`: the records expected (from the plan), for a percentage and an ETA."""

    def __init__(self, stream: Optional[TextIO] = None, total: Optional[int] = None,
                 log_every_s: float = LOG_EVERY_S):
        self._stream = stream or sys.stderr
        self._total = total
        self._tty = self._stream.isatty()
        self._period = REFRESH_S if self._tty else log_every_s
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._started = time.monotonic()

    def __enter__(self) -> "ProgressLine":
        reset()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self._period):
            line = render(snapshot(), time.monotonic() - self._started, self._total)
            self._stream.write("\r" + line + "\x1b[K" if self._tty else "progress " + line + "\n")
            self._stream.flush()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
            if self._tty:
                self._stream.write("\r\x1b[K")
                self._stream.flush()
