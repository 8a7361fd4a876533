"""Deadlines as people write them (3600, 90m, 2h, 09:00, an ISO time); durations are
formatted by transforms.progress.format_duration (re-exported here)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Optional

from transforms.progress import format_duration

__all__ = ["parse_deadline", "format_duration"]



# ---------------------------------------------------------------------------
# Deadline

_DURATION_RE = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*d)?\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*"
                          r"(?:(\d+(?:\.\d+)?)\s*m(?:in)?)?\s*(?:(\d+(?:\.\d+)?)\s*s?)?\s*$", re.I)
_CLOCK_RE = re.compile(r"^\s*(\d{1,2}):(\d{2})(?::(\d{2}))?\s*$")


def parse_deadline(text: str, now: Optional[dt.datetime] = None) -> float:
    """Seconds from `now` until the deadline `text`.

    Accepts a duration ("3600", "3600s", "90m", "2h", "1h30m", "1d"), an ISO
    8601 time ("2026-11-26T09:00:00Z", "2026-11-26 09:00+01:00"; without a
    zone: now's zone), or a clock time "HH:MM[:SS]" (its next occurrence in
    now's zone, today or tomorrow). `now` defaults to the current local time.
    Raises ValueError for anything else or a time already past.
    """
    if now is None:
        now = dt.datetime.now().astimezone()
    if not text or not str(text).strip():
        raise ValueError("--deadline is empty")
    text = str(text).strip()
    m = _DURATION_RE.match(text)
    if m and any(m.groups()):
        d, h, mi, s = (float(g) if g else 0.0 for g in m.groups())
        seconds = d * 86400 + h * 3600 + mi * 60 + s
        if seconds <= 0:
            raise ValueError(f"--deadline {text!r} must be in the future")
        return seconds
    m = _CLOCK_RE.match(text)
    if m:
        hour, minute, second = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
        if hour > 23 or minute > 59 or second > 59:
            raise ValueError(f"--deadline {text!r} is not a valid time of day")
        target = now.replace(hour=hour, minute=minute, second=second, microsecond=0)
        if target <= now:
            target += dt.timedelta(days=1)
        return (target - now).total_seconds()
    iso = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    try:
        target = dt.datetime.fromisoformat(iso)
    except ValueError:
        raise ValueError(f"--deadline {text!r}: expected seconds (3600, 90m, 2h), an ISO time "
                         "(2026-11-26T09:00:00Z) or HH:MM") from None
    if target.tzinfo is None and now.tzinfo is not None:
        target = target.replace(tzinfo=now.tzinfo)
    elif target.tzinfo is not None and now.tzinfo is None:
        now = now.astimezone()
    seconds = (target - now).total_seconds()
    if seconds <= 0:
        raise ValueError(f"--deadline {text!r} is in the past")
    return seconds
