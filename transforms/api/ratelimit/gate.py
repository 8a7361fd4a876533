"""Adaptive concurrency for 529 ``overloaded_error``: :class:`ConcurrencyGate`.

An AIMD cap on requests in flight, unrelated to quotas (a 529 means the
service is busy, not that the budget is spent).
"""
from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable, Dict, Optional


class GateTimeout(TimeoutError):
    """ConcurrencyGate.acquire() found no free slot within its timeout."""


class ConcurrencyGate:
    """An AIMD cap on requests in flight, for 529 ``overloaded_error``.

    A 529 is not a quota problem -- the service is busy -- so the answer is
    fewer requests at once, not fewer per minute. :meth:`backoff` halves the
    cap (never below ``min_concurrency``) and holds it for ``cooldown_s``;
    then the cap grows back by one every ``increase_interval_s`` up to
    ``max_concurrency``. 529s arriving within ``decrease_guard_s`` of a halving
    (the other requests of the same burst) only extend the cool-down: one
    overload event halves once. Thread-safe; the clock is injectable and the
    cap is computed from it lazily, so no timer thread is needed.
    """

    def __init__(self, max_concurrency: int, *, min_concurrency: int = 1, cooldown_s: float = 30.0,
                 increase_interval_s: float = 5.0, decrease_guard_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        if max_concurrency < 1 or not 1 <= min_concurrency <= max_concurrency:
            raise ValueError("need 1 <= min_concurrency <= max_concurrency")
        if cooldown_s < 0 or not increase_interval_s > 0 or decrease_guard_s < 0:
            raise ValueError("cooldown_s, decrease_guard_s must be >= 0 and increase_interval_s > 0")
        self.max_concurrency = int(max_concurrency)
        self.min_concurrency = int(min_concurrency)
        self.cooldown_s = float(cooldown_s)
        self.increase_interval_s = float(increase_interval_s)
        self.decrease_guard_s = float(decrease_guard_s)
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._base = self.max_concurrency
        self._cooldown_until = -math.inf
        self._last_decrease = -math.inf
        self._in_use = 0
        self._backoffs = 0
        self._waited_s = 0.0

    def _limit(self, now: float) -> int:
        if self._base >= self.max_concurrency or now < self._cooldown_until:
            return self._base
        steps = 1 + int((now - self._cooldown_until) // self.increase_interval_s)
        return min(self.max_concurrency, self._base + steps)

    def _next_change(self, now: float) -> Optional[float]:
        if self._base >= self.max_concurrency:
            return None
        if now < self._cooldown_until:
            return self._cooldown_until - now
        elapsed = now - self._cooldown_until
        return self.increase_interval_s - (elapsed % self.increase_interval_s)

    @property
    def limit(self) -> int:
        """The cap in force now."""
        with self._cond:
            return self._limit(self._clock())

    @property
    def in_use(self) -> int:
        with self._cond:
            return self._in_use

    def backoff(self) -> int:
        """An overload (529) happened: halve the cap (once per event); returns the new cap."""
        with self._cond:
            now = self._clock()
            current = self._limit(now)
            if now - self._last_decrease >= self.decrease_guard_s:
                self._base = max(self.min_concurrency, current // 2)
                self._last_decrease = now
                self._backoffs += 1
            else:
                self._base = min(self._base, current)
            self._cooldown_until = now + self.cooldown_s
            return self._base

    def try_acquire(self) -> bool:
        """Take a slot if one is free now."""
        with self._cond:
            if self._in_use < self._limit(self._clock()):
                self._in_use += 1
                return True
            return False

    def acquire(self, timeout: Optional[float] = None) -> None:
        """Block until a slot is free (real-time waiting); GateTimeout after ``timeout``."""
        start = self._clock()
        with self._cond:
            while True:
                now = self._clock()
                if self._in_use < self._limit(now):
                    self._in_use += 1
                    self._waited_s += max(0.0, now - start)
                    return
                wait = self._next_change(now)
                if timeout is not None:
                    remaining = start + timeout - now
                    if remaining <= 0:
                        raise GateTimeout(f"no free slot within {timeout} s (cap {self._limit(now)})")
                    wait = remaining if wait is None else min(wait, remaining)
                self._cond.wait(wait)

    def release(self) -> None:
        with self._cond:
            if self._in_use <= 0:
                raise RuntimeError("release() without acquire()")
            self._in_use -= 1
            self._cond.notify_all()

    def slot(self, timeout: Optional[float] = None) -> "_GateSlot":
        """``with gate.slot(): ...`` holds one slot for the block."""
        return _GateSlot(self, timeout)

    def stats(self) -> Dict[str, Any]:
        with self._cond:
            return {"limit": self._limit(self._clock()), "in_use": self._in_use,
                    "backoffs": self._backoffs, "waited_seconds": self._waited_s}


class _GateSlot:
    def __init__(self, gate: ConcurrencyGate, timeout: Optional[float]):
        self._gate = gate
        self._timeout = timeout

    def __enter__(self) -> ConcurrencyGate:
        self._gate.acquire(self._timeout)
        return self._gate

    def __exit__(self, *exc_info: Any) -> None:
        self._gate.release()
