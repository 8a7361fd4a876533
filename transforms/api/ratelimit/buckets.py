"""Token buckets and the limits they enforce: the pure refill math.

:class:`Limits` (RPM, ITPM, OTPM, RPD as configured or learned),
:class:`TokenBucket` (continuous refill up to a capacity; every method takes
``now``), the dimension names shared by the whole package, and how a limit
becomes a bucket's rate and capacity. No threads, no clocks, no I/O.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Tuple

#: Bucket capacity in seconds of refill. The API enforces its per-minute limits
#: over short intervals (60 RPM may be enforced as 1 request per second), so a
#: bucket holding a whole minute would allow bursts the API rejects; a few
#: seconds keeps start-up and post-pause bursts small while still absorbing
#: jitter in request sizes.
DEFAULT_BURST_SECONDS = 3.0

REQUESTS = "requests"
INPUT_TOKENS = "input_tokens"
OUTPUT_TOKENS = "output_tokens"
REQUESTS_PER_DAY = "requests_per_day"
_DIMS = (REQUESTS, INPUT_TOKENS, OUTPUT_TOKENS, REQUESTS_PER_DAY)
_PERIOD_S = {REQUESTS: 60.0, INPUT_TOKENS: 60.0, OUTPUT_TOKENS: 60.0, REQUESTS_PER_DAY: 86400.0}
#: Relative slack for float comparisons: a bucket refilled for exactly the
#: computed wait must not come out 1e-12 short and send the caller round again.
_EPS = 1e-9


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-model-class limits; None means unknown (learned from headers) or unlimited.

    rpm: requests per minute; itpm / otpm: input / output tokens per minute;
    rpd: requests per day (no header reports it, so it is never learned).
    """

    rpm: Optional[int] = None
    itpm: Optional[int] = None
    otpm: Optional[int] = None
    rpd: Optional[int] = None

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"Limits.{field.name} must be a positive int or None, got {value!r}")

    def get(self, dim: str) -> Optional[int]:
        """The limit of one dimension (REQUESTS, INPUT_TOKENS, ...)."""
        return {REQUESTS: self.rpm, INPUT_TOKENS: self.itpm, OUTPUT_TOKENS: self.otpm,
                REQUESTS_PER_DAY: self.rpd}[dim]

    @classmethod
    def from_dims(cls, values: Mapping[str, Optional[float]]) -> "Limits":
        def _int(dim: str) -> Optional[int]:
            value = values.get(dim)
            return None if value is None else max(1, int(value))
        return cls(rpm=_int(REQUESTS), itpm=_int(INPUT_TOKENS), otpm=_int(OUTPUT_TOKENS),
                   rpd=_int(REQUESTS_PER_DAY))


# --------------------------------------------------------------------------
# The bucket math
# --------------------------------------------------------------------------

class TokenBucket:
    """A token bucket that refills continuously at ``rate`` per second up to ``capacity``.

    Pure and not thread-safe: callers pass the time and hold their own lock.
    The level may go negative (debt): a settle that debits more than was
    reserved, a request larger than the whole capacity, or a 429 penalty.
    Debt is paid back by refill before anything else can be taken.
    """

    __slots__ = ("rate", "capacity", "_level", "_t")

    def __init__(self, rate: float, capacity: float, now: float, level: Optional[float] = None):
        if not rate > 0 or not capacity > 0:
            raise ValueError(f"rate and capacity must be > 0, got {rate!r}, {capacity!r}")
        self.rate = float(rate)
        self.capacity = float(capacity)
        self._level = self.capacity if level is None else min(float(level), self.capacity)
        self._t = now

    def _refill(self, now: float) -> None:
        if now > self._t:
            if self._level < self.capacity:
                self._level = min(self.capacity, self._level + (now - self._t) * self.rate)
            self._t = now

    def level(self, now: float) -> float:
        """Tokens available at ``now`` (negative while in debt)."""
        self._refill(now)
        return self._level

    def wait_time(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` can be taken; 0 if it can be now.

        An amount larger than the capacity can be taken once the bucket is
        full (it leaves the bucket in debt): otherwise a request bigger than a
        few seconds' worth of tokens could never be sent at all.
        """
        self._refill(now)
        need = min(float(amount), self.capacity)
        if self._level >= need - _EPS * max(1.0, need):
            return 0.0
        return (need - self._level) / self.rate

    def take(self, amount: float, now: float) -> None:
        """Remove ``amount`` unconditionally (check :meth:`wait_time` first)."""
        self._refill(now)
        self._level -= amount

    def give(self, amount: float, now: float) -> None:
        """Add ``amount`` back (a refund, capped at capacity); negative debits."""
        self._refill(now)
        self._level = min(self.capacity, self._level + amount)

    def lower_to(self, value: float, now: float) -> bool:
        """Set the level to ``value`` if that is lower; True if it was."""
        self._refill(now)
        if value < self._level:
            self._level = value
            return True
        return False

    def reconfigure(self, rate: float, capacity: float, now: float) -> None:
        """Change rate and capacity (a newly learned limit), keeping the level."""
        if not rate > 0 or not capacity > 0:
            raise ValueError(f"rate and capacity must be > 0, got {rate!r}, {capacity!r}")
        self._refill(now)
        self.rate = float(rate)
        self.capacity = float(capacity)
        self._level = min(self._level, self.capacity)


def _bucket_shape(dim: str, limit: float, burst_seconds: float) -> Tuple[float, float]:
    """(rate per second, capacity) of a dimension's bucket for a limit."""
    rate = float(limit) / _PERIOD_S[dim]
    if dim == REQUESTS_PER_DAY:
        # A daily quota has no short-interval enforcement to respect: the
        # whole day's budget may be used at any pace.
        return rate, float(limit)
    return rate, rate * burst_seconds
