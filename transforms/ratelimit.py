"""Client-side rate limiting for Claude's Messages API.

The API enforces requests per minute (RPM), input tokens per minute (ITPM) and
output tokens per minute (OTPM) as token buckets that refill *continuously*
and over short intervals, not as a window that resets each minute. This module
mirrors that on the client so that a job running at the edge of its limits
sends work at the rate the API will accept instead of collecting 429s:

* :class:`TokenBucket` -- the pure refill math (every method takes ``now``).
* :class:`RateLimiter` -- one process's view of the budget: a bucket per
  dimension, all-or-nothing reservations, corrections from the
  ``anthropic-ratelimit-*`` response headers, a 429 penalty. Thread-safe.
* :class:`RedisRateLimiter` -- the same interface over one Redis hash, so N
  workers share one budget atomically (a Lua script, Redis server time).
* :class:`ConcurrencyGate` -- an AIMD cap on requests in flight that a 529
  (overloaded) halves; unrelated to quotas.
* :func:`get_limiter` -- the per-process registry (one limiter per budget).

How a caller uses it::

    limiter = get_limiter(budget_key, functools.partial(RateLimiter, limits))
    with limiter.acquire(estimated_input, expected_output) as reservation:
        raw = client.messages.with_raw_response.create(...)
        reservation.observe_headers(raw.headers)
        message = raw.parse()
        reservation.settle(message.usage.input_tokens, message.usage.output_tokens)

Leaving the ``with`` block without settling (an exception) releases the
reservation: its tokens go back, the request stays counted.

Header corrections, in short (details on :meth:`RateLimiter.observe_headers`):
``-limit`` teaches a limit that was not configured (and lowers one configured
too high); ``-remaining`` can only *lower* the local level, never raise it; the
``-reset`` time is parsed and reported but not used for the level.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime
import itertools
import logging
import math
import threading
import time
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, TypeVar

from transforms import registry

__all__ = [
    "Limits",
    "TokenBucket",
    "Reservation",
    "Settlement",
    "HeaderLimits",
    "AcquireTimeout",
    "RateLimiter",
    "RedisRateLimiter",
    "ConcurrencyGate",
    "GateTimeout",
    "parse_ratelimit_headers",
    "get_limiter",
    "create_limiter",
    "REQUESTS",
    "INPUT_TOKENS",
    "OUTPUT_TOKENS",
    "REQUESTS_PER_DAY",
]

_LOG = logging.getLogger(__name__)

#: Bucket capacity in seconds of refill. The API enforces its per-minute limits
#: over short intervals (60 RPM may be enforced as 1 request per second), so a
#: bucket holding a whole minute would allow bursts the API rejects; a few
#: seconds keeps start-up and post-pause bursts small while still absorbing
#: jitter in request sizes.
DEFAULT_BURST_SECONDS = 3.0
#: Requests in flight allowed per process while a limit is still unknown and
#: waiting to be learned from the first response's headers.
DEFAULT_BOOTSTRAP_CONCURRENCY = 1
#: Responses observed without any ``anthropic-ratelimit-*-limit`` header after
#: which learning gives up (a proxy or an emulator that sends none) and the
#: unknown dimensions run unlimited, 429s being the only brake left.
DEFAULT_BOOTSTRAP_RESPONSES = 3
#: How often a waiting RedisRateLimiter re-asks Redis: other processes refund
#: and learn without being able to wake this one.
DEFAULT_REDIS_POLL_S = 0.25
#: Redis state expires after this long without any write (two days: longer
#: than the requests-per-day bucket needs).
DEFAULT_REDIS_TTL_S = 2 * 86400

REQUESTS = "requests"
INPUT_TOKENS = "input_tokens"
OUTPUT_TOKENS = "output_tokens"
REQUESTS_PER_DAY = "requests_per_day"
_DIMS = (REQUESTS, INPUT_TOKENS, OUTPUT_TOKENS, REQUESTS_PER_DAY)
_PERIOD_S = {REQUESTS: 60.0, INPUT_TOKENS: 60.0, OUTPUT_TOKENS: 60.0, REQUESTS_PER_DAY: 86400.0}
#: The header name part of each dimension that the API reports.
_HEADER_DIM = {"requests": REQUESTS, "input-tokens": INPUT_TOKENS, "output-tokens": OUTPUT_TOKENS}
_HEADER_PREFIX = "anthropic-ratelimit-"
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


# --------------------------------------------------------------------------
# Headers
# --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class HeaderLimits:
    """One dimension of the ``anthropic-ratelimit-*`` headers (None = absent or garbage)."""

    limit: Optional[int] = None
    remaining: Optional[int] = None
    reset: Optional[datetime.datetime] = None


def _parse_count(value: Any) -> Optional[int]:
    try:
        number = float(str(value).strip())
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or number < 0:
        return None
    return int(number)


def _parse_rfc3339(value: Any) -> Optional[datetime.datetime]:
    text = str(value).strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed


def parse_ratelimit_headers(headers: Optional[Mapping[str, str]]) -> Dict[str, HeaderLimits]:
    """The ``anthropic-ratelimit-{requests,input-tokens,output-tokens}-*`` headers.

    Keyed by dimension (REQUESTS, INPUT_TOKENS, OUTPUT_TOKENS); a dimension
    with none of its headers is absent. Header names are matched
    case-insensitively; unparsable values count as absent. The combined
    ``anthropic-ratelimit-tokens-*`` headers are ignored: the separate input
    and output ones carry strictly more information.
    """
    if not headers:
        return {}
    found: Dict[str, Dict[str, Any]] = {}
    for name, value in headers.items():
        lower = str(name).lower()
        if not lower.startswith(_HEADER_PREFIX):
            continue
        rest = lower[len(_HEADER_PREFIX):]
        head, _, field = rest.rpartition("-")
        dim = _HEADER_DIM.get(head)
        if dim is None or field not in ("limit", "remaining", "reset"):
            continue
        parsed = _parse_rfc3339(value) if field == "reset" else _parse_count(value)
        if parsed is not None:
            found.setdefault(dim, {})[field] = parsed
    return {dim: HeaderLimits(**fields) for dim, fields in found.items()}


# --------------------------------------------------------------------------
# Reservations
# --------------------------------------------------------------------------

class AcquireTimeout(TimeoutError):
    """acquire() could not reserve capacity within its timeout."""


@dataclasses.dataclass(frozen=True)
class Settlement:
    """What settling a reservation changed: positive = refunded, negative = extra debit."""

    input_tokens: float
    output_tokens: float


class Reservation:
    """Capacity reserved by one request: 1 request, its input and expected output tokens.

    Exactly one of :meth:`settle` (the response's real usage) or
    :meth:`release` (the request failed) ends it; used as a context manager,
    leaving the block without settling releases it.
    """

    def __init__(self, limiter: "_LimiterBase", input_tokens: float, output_tokens: float,
                 granted_at: float, waited_s: float, backend_time: float,
                 cumulative: Mapping[str, float]):
        self._limiter = limiter
        #: Input tokens reserved (the estimate).
        self.input_tokens = input_tokens
        #: Output tokens reserved (the expectation, not max_tokens).
        self.output_tokens = output_tokens
        #: When it was granted, on the limiter's clock.
        self.granted_at = granted_at
        #: Seconds the caller waited for it.
        self.waited_s = waited_s
        #: When it was granted on the clock the buckets use (the limiter's
        #: clock locally, Redis server time for RedisRateLimiter).
        self.backend_time = backend_time
        # Tokens taken by everyone (this process, or every worker for Redis)
        # up to and including this grant: lets a later header reading be
        # corrected for what was reserved after this request was sent.
        self._cumulative = dict(cumulative)
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def settle(self, actual_input: float, actual_output: float) -> Settlement:
        """Record the real usage: refund what was over-reserved, debit what was under."""
        if actual_input < 0 or actual_output < 0:
            raise ValueError("actual token counts must be >= 0")
        return self._limiter._finish(self, float(actual_input), float(actual_output), release=False)

    def release(self) -> Settlement:
        """The request failed: refund its tokens (the request itself stays counted).

        Idempotent: releasing a finished reservation changes nothing.
        """
        return self._limiter._finish(self, 0.0, 0.0, release=True)

    def observe_headers(self, headers: Mapping[str, str]) -> Dict[str, HeaderLimits]:
        """:meth:`RateLimiter.observe_headers` for this request's response."""
        return self._limiter.observe_headers(headers, reservation=self)

    def __enter__(self) -> "Reservation":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if not self._done:
            self.release()

    def __repr__(self) -> str:
        return (f"Reservation(input_tokens={self.input_tokens}, output_tokens={self.output_tokens}, "
                f"waited_s={self.waited_s:.3f}, done={self._done})")


# --------------------------------------------------------------------------
# The limiter (shared logic), then its two backends
# --------------------------------------------------------------------------

class _LimiterBase:
    """Waiting, fairness, bootstrap, learning and stats; subclasses keep the buckets.

    Backend hooks, always called with ``self._cond`` held:
      _take(amounts, dry_run) -> (wait_s, backend_time, cumulative or None)
      _adjust(deltas)                       refund (+) / debit (-) per dimension
      _lower(parsed, learned, reservation)  header correction -> buckets lowered
      _block(seconds)                       429 penalty
      _levels() -> {dim: level or None}
    """

    def __init__(self, limits: Optional[Limits], *, burst_seconds: float, learn_from_headers: bool,
                 bootstrap_concurrency: int, bootstrap_responses: int, share: float,
                 clock: Callable[[], float], sleep: Optional[Callable[[float], None]],
                 poll_s: Optional[float]):
        if limits is not None and not isinstance(limits, Limits):
            raise TypeError(f"limits must be a Limits, got {type(limits).__name__}")
        if not burst_seconds > 0:
            raise ValueError("burst_seconds must be > 0")
        if bootstrap_concurrency < 1:
            raise ValueError("bootstrap_concurrency must be >= 1")
        if not 0 < share <= 1:
            raise ValueError("share must be in (0, 1]")
        self._configured = limits or Limits()
        self._burst_seconds = float(burst_seconds)
        self._learn = bool(learn_from_headers)
        self._bootstrap_concurrency = int(bootstrap_concurrency)
        self._bootstrap_responses = int(bootstrap_responses)
        self._share = float(share)
        self._clock = clock
        self._sleep = sleep
        self._poll_s = poll_s
        self._learned: Dict[str, int] = {}
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque = collections.deque()
        self._tickets = itertools.count()
        self._in_flight = 0
        self._bootstrapping = self._learn and any(
            self._configured.get(dim) is None for dim in _HEADER_DIM.values())
        self._responses_without_limits = 0
        self._stats: Dict[str, float] = collections.defaultdict(float)
        self._last_reset: Dict[str, datetime.datetime] = {}

    # ---- public API ------------------------------------------------------

    def acquire(self, input_tokens: float, output_tokens: float = 0, timeout: Optional[float] = None
                ) -> Reservation:
        """Block until every bucket covers one request of this size, then reserve it.

        All buckets are checked and debited together under one lock (one Lua
        call for Redis): nothing is held while waiting. Waiters are served
        first come, first served, so a large request is not starved by a
        stream of small ones. ``timeout`` (seconds on the limiter's clock,
        None = forever, 0 = no waiting) raises :class:`AcquireTimeout`.
        """
        amounts = self._amounts(input_tokens, output_tokens)
        start = self._clock()
        deadline = None if timeout is None else start + max(0.0, float(timeout))
        with self._cond:
            ticket = next(self._tickets)
            self._queue.append(ticket)
            waited_at_all = False
            try:
                while True:
                    now = self._clock()
                    if self._queue[0] != ticket:
                        waited_at_all = True
                        self._wait_event(deadline, now, timeout)
                        continue
                    if self._bootstrapping and self._in_flight >= self._bootstrap_concurrency:
                        if self._external_bootstrap_done():
                            self._end_bootstrap("another worker learned the limits")
                            continue
                        waited_at_all = True
                        self._wait_event(deadline, now, timeout, poll=self._poll_s)
                        continue
                    wait, backend_time, cumulative = self._take(amounts, dry_run=False)
                    if wait <= 0:
                        break
                    if deadline is not None:
                        wait = min(wait, deadline - now)
                        if wait <= 0:
                            raise AcquireTimeout(self._timeout_message(timeout))
                    if self._poll_s is not None:
                        wait = min(wait, self._poll_s)
                    self._stats["backoff_sleeps"] += 1
                    waited_at_all = True
                    self._wait_for(wait)
            except BaseException as exc:
                self._queue.remove(ticket)
                if isinstance(exc, AcquireTimeout):
                    self._stats["timeouts"] += 1
                self._cond.notify_all()
                raise
            self._queue.popleft()
            self._in_flight += 1
            granted_at = self._clock()
            # a grant that never waited costs no throttle time, however
            # long the Redis round trip took
            waited = max(0.0, granted_at - start) if waited_at_all else 0.0
            self._stats["acquired"] += 1
            self._stats["reserved_input_tokens"] += amounts[INPUT_TOKENS]
            self._stats["reserved_output_tokens"] += amounts[OUTPUT_TOKENS]
            if waited > 0:
                self._stats["waits"] += 1
                self._stats["throttled_seconds"] += waited
            self._cond.notify_all()
        return Reservation(self, amounts[INPUT_TOKENS], amounts[OUTPUT_TOKENS], granted_at, waited,
                           backend_time, cumulative or {})

    def try_acquire(self, input_tokens: float, output_tokens: float = 0) -> Optional[Reservation]:
        """Reserve without waiting; None if the capacity is not there right now."""
        try:
            return self.acquire(input_tokens, output_tokens, timeout=0)
        except AcquireTimeout:
            return None

    def estimate_wait(self, input_tokens: float, output_tokens: float = 0) -> float:
        """Seconds until a request of this size could be granted, ignoring other waiters.

        For load shedding: work that would wait past its deadline can be sent
        to the Batch API instead. Nothing is reserved.
        """
        amounts = self._amounts(input_tokens, output_tokens)
        with self._cond:
            wait, _, _ = self._take(amounts, dry_run=True)
        return max(0.0, wait)

    def estimate_queue_wait(self, requests: float, input_tokens: float, output_tokens: float = 0) -> float:
        """Seconds until a queue of `requests` requests holding these tokens in
        total could all have been granted, at the current levels and refill
        rates (plus any 429 pause). Nothing is reserved.

        Unlike :meth:`estimate_wait` (one request, capped at a full bucket) this
        is the fluid projection of a backlog: a queue worth five minutes of
        tokens drains in five minutes whatever the bucket's burst capacity.
        For load shedding: work projected past --deadline leaves the queue.
        """
        amounts = self._amounts(input_tokens, output_tokens)
        amounts[REQUESTS] = amounts[REQUESTS_PER_DAY] = max(0.0, float(requests))
        with self._cond:
            # a 429 pause (or a single over-sized request) as the backend sees it
            wait, _, _ = self._take(self._amounts(0, 0), dry_run=True)
            levels = self._levels()
            for dim, level in levels.items():
                limit = self._effective_limit(dim)
                if level is None or limit is None or amounts[dim] <= 0:
                    continue
                wait = max(wait, (amounts[dim] - level) / (limit / _PERIOD_S[dim]))
        return max(0.0, wait)

    def observe_headers(self, headers: Optional[Mapping[str, str]],
                        reservation: Optional[Reservation] = None) -> Dict[str, HeaderLimits]:
        """Correct the local view with a response's ``anthropic-ratelimit-*`` headers.

        The headers are the organisation's truth across all workers; the local
        buckets are this process's guess. Applied as follows:

        * ``-limit``: when learning (the default) it becomes the dimension's
          limit times ``share`` if none was configured, and lowers a
          configured limit that is higher than the server's. A newly limited
          dimension starts with a full bucket (then the ``-remaining`` rule).
          The first response carrying limits ends the bootstrap phase.
        * ``-remaining``: the local level is lowered to it when it is lower,
          never raised. Raising would trust a snapshot that is already stale
          (taken when the server admitted this request, before the requests
          sent since) and could exceed the short-interval capacity the local
          bucket enforces (the server's bucket holds up to a minute's worth);
          the local bucket refills by itself anyway. When the reservation of
          the request that produced these headers is given, the value is
          first corrected for the time and tokens reserved since that request
          was granted: ``remaining - (taken since) + rate * (time since)``,
          never below ``min(remaining, 0)``; without it ``remaining`` is used
          as is. A refund settled after a correction can over-credit by at
          most that request's estimate error; the next response corrects it.
        * ``-reset``: parsed and reported in :meth:`stats` only. The server's
          clock is not ours, and with a continuously refilling bucket the
          reset time is implied by the limit and remaining anyway.

        Returns the parsed headers.
        """
        parsed = parse_ratelimit_headers(headers)
        with self._cond:
            self._stats["header_observations"] += 1
            learned: Dict[str, int] = {}
            has_limits = False
            for dim, values in parsed.items():
                if values.reset is not None:
                    self._last_reset[dim] = values.reset
                if values.limit is not None and values.limit > 0:
                    has_limits = True
                    if self._learn:
                        learned[dim] = max(1, int(values.limit * self._share))
            self._learned.update(learned)
            lowered = self._lower(parsed, learned, reservation)
            if lowered:
                self._stats["header_corrections"] += lowered
            if self._bootstrapping:
                if has_limits:
                    self._end_bootstrap("limits learned from response headers")
                elif headers is not None:
                    self._responses_without_limits += 1
                    if self._responses_without_limits >= self._bootstrap_responses:
                        self._end_bootstrap("no anthropic-ratelimit-*-limit header in %d responses; "
                                            "unknown limits now run unlimited"
                                            % self._responses_without_limits)
            self._cond.notify_all()
        return parsed

    def penalize(self, retry_after_s: Optional[float]) -> None:
        """A 429 arrived: nobody sends before ``retry_after_s`` elapses.

        Every bucket is also drained to at most zero, so that when the pause
        ends the budget is what refilled meanwhile (the server's own picture
        after a 429), not a full burst that would hit the limit again.
        """
        try:
            seconds = max(0.0, float(retry_after_s or 0.0))
        except (TypeError, ValueError):
            seconds = 0.0
        if not math.isfinite(seconds):
            seconds = 0.0
        with self._cond:
            self._block(seconds)
            self._stats["penalties"] += 1
            self._stats["penalty_seconds"] += seconds
            self._cond.notify_all()

    @property
    def limits(self) -> Limits:
        """The limits in force: configured, lowered or completed by learned ones."""
        with self._cond:
            return self._effective_limits()

    @property
    def throttled_seconds(self) -> float:
        """Total seconds callers spent waiting in acquire()."""
        with self._cond:
            return self._stats["throttled_seconds"]

    @property
    def in_flight(self) -> int:
        """Reservations granted and not yet settled or released."""
        with self._cond:
            return self._in_flight

    @property
    def bootstrapping(self) -> bool:
        """True while unknown limits are still awaited from the first headers."""
        with self._cond:
            return self._bootstrapping

    def levels(self) -> Dict[str, Optional[float]]:
        """Current level of each limited dimension (None = unlimited)."""
        with self._cond:
            return self._levels()

    def stats(self) -> Dict[str, Any]:
        """Counters for metrics: acquired, settled, released, waits,
        throttled_seconds, timeouts, penalties, penalty_seconds,
        header_observations, header_corrections, refunded_/extra_ tokens,
        in_flight, queued, bootstrapping, limits, last_reset."""
        with self._cond:
            out: Dict[str, Any] = {name: self._stats.get(name, 0.0) for name in (
                "acquired", "settled", "released", "waits", "throttled_seconds", "timeouts",
                "backoff_sleeps", "penalties", "penalty_seconds", "header_observations",
                "header_corrections", "reserved_input_tokens", "reserved_output_tokens",
                "refunded_input_tokens", "refunded_output_tokens", "extra_input_tokens",
                "extra_output_tokens")}
            out["in_flight"] = self._in_flight
            out["queued"] = len(self._queue)
            out["bootstrapping"] = self._bootstrapping
            out["limits"] = dataclasses.asdict(self._effective_limits())
            out["last_reset"] = {dim: value.isoformat() for dim, value in self._last_reset.items()}
            return out

    # ---- internals -------------------------------------------------------

    def _amounts(self, input_tokens: float, output_tokens: float) -> Dict[str, float]:
        if input_tokens is None or output_tokens is None or input_tokens < 0 or output_tokens < 0:
            raise ValueError("token counts must be >= 0")
        return {REQUESTS: 1.0, INPUT_TOKENS: float(input_tokens), OUTPUT_TOKENS: float(output_tokens),
                REQUESTS_PER_DAY: 1.0}

    def _effective_limit(self, dim: str) -> Optional[int]:
        configured = self._configured.get(dim)
        learned = self._learned.get(dim) if self._learn else None
        if learned is None:
            return configured
        if configured is None:
            return learned
        return min(configured, learned)

    def _effective_limits(self) -> Limits:
        return Limits.from_dims({dim: self._effective_limit(dim) for dim in _DIMS})

    def _end_bootstrap(self, why: str) -> None:
        if self._bootstrapping:
            self._bootstrapping = False
            _LOG.info("rate limiter: bootstrap over (%s)", why)

    def _external_bootstrap_done(self) -> bool:
        return False

    def _timeout_message(self, timeout: Optional[float]) -> str:
        return f"no rate-limit capacity within {timeout} s"

    def _wait_for(self, seconds: float) -> None:
        """Sleep with the lock released; a refund or correction wakes us early."""
        if self._sleep is None:
            self._cond.wait(seconds)
            return
        self._cond.release()
        try:
            self._sleep(seconds)
        finally:
            self._cond.acquire()

    def _wait_event(self, deadline: Optional[float], now: float, timeout: Optional[float],
                    poll: Optional[float] = None) -> None:
        """Wait for another thread's notify (a turn in the queue, a settle)."""
        remaining = None
        if deadline is not None:
            remaining = deadline - now
            if remaining <= 0:
                raise AcquireTimeout(self._timeout_message(timeout))
        if poll is not None:
            remaining = poll if remaining is None else min(remaining, poll)
        self._cond.wait(remaining)

    def _finish(self, reservation: Reservation, actual_input: float, actual_output: float,
                release: bool) -> Settlement:
        with self._cond:
            if reservation._done:
                if release:
                    return Settlement(0.0, 0.0)
                raise RuntimeError("reservation already settled or released")
            reservation._done = True
            if release:
                delta_in, delta_out = reservation.input_tokens, reservation.output_tokens
                self._stats["released"] += 1
            else:
                delta_in = reservation.input_tokens - actual_input
                delta_out = reservation.output_tokens - actual_output
                self._stats["settled"] += 1
            for dim, delta in ((INPUT_TOKENS, delta_in), (OUTPUT_TOKENS, delta_out)):
                key = "refunded_" if delta > 0 else "extra_"
                self._stats[key + dim] += abs(delta)
            try:
                self._adjust({INPUT_TOKENS: delta_in, OUTPUT_TOKENS: delta_out})
            finally:
                self._in_flight -= 1
                self._cond.notify_all()
            return Settlement(delta_in, delta_out)

    # backend hooks
    def _take(self, amounts: Mapping[str, float], dry_run: bool
              ) -> Tuple[float, float, Optional[Dict[str, float]]]:
        raise NotImplementedError

    def _adjust(self, deltas: Mapping[str, float]) -> None:
        raise NotImplementedError

    def _lower(self, parsed: Mapping[str, HeaderLimits], learned: Mapping[str, int],
               reservation: Optional[Reservation]) -> int:
        raise NotImplementedError

    def _block(self, seconds: float) -> None:
        raise NotImplementedError

    def _levels(self) -> Dict[str, Optional[float]]:
        raise NotImplementedError


class RateLimiter(_LimiterBase):
    """One process's rate limiter: buckets for RPM, ITPM, OTPM and optionally RPD.

    Thread-safe; share one per process and budget through :func:`get_limiter`.

    limits:               configured limits; a None dimension is learned from
                          the response headers (``learn_from_headers``) or,
                          when not learning, unlimited.
    burst_seconds:        bucket capacity in seconds of refill (RPD: one day).
    learn_from_headers:   use ``-limit`` headers (see :meth:`observe_headers`).
    bootstrap_concurrency: requests in flight allowed while a limit is still
                          unknown, before the first response's headers: the
                          first request is a probe that teaches the limits,
                          without risking a burst of 429s against a budget of
                          unknown size (and penalties for every thread).
    bootstrap_responses:  responses without any limit header after which the
                          limiter stops waiting to learn.
    share:                fraction of a learned limit this limiter may use:
                          1/N for N processes that do not share Redis, or
                          less than 1 to leave room for other clients.
    clock / sleep:        injectable monotonic clock and sleep (tests). With
                          ``sleep=None`` waiting uses a condition variable, so
                          a refund wakes waiters early.
    """

    def __init__(self, limits: Optional[Limits] = None, *, burst_seconds: float = DEFAULT_BURST_SECONDS,
                 learn_from_headers: bool = True, bootstrap_concurrency: int = DEFAULT_BOOTSTRAP_CONCURRENCY,
                 bootstrap_responses: int = DEFAULT_BOOTSTRAP_RESPONSES, share: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Optional[Callable[[float], None]] = None):
        super().__init__(limits, burst_seconds=burst_seconds, learn_from_headers=learn_from_headers,
                         bootstrap_concurrency=bootstrap_concurrency,
                         bootstrap_responses=bootstrap_responses, share=share, clock=clock, sleep=sleep,
                         poll_s=None)
        now = self._clock()
        self._buckets: Dict[str, Optional[TokenBucket]] = {dim: None for dim in _DIMS}
        self._cumulative: Dict[str, float] = {dim: 0.0 for dim in _DIMS}
        self._blocked_until = -math.inf
        self._apply_limits(now)

    def _apply_limits(self, now: float) -> None:
        for dim in _DIMS:
            limit = self._effective_limit(dim)
            bucket = self._buckets[dim]
            if limit is None:
                self._buckets[dim] = None
                continue
            rate, capacity = _bucket_shape(dim, limit, self._burst_seconds)
            if bucket is None:
                self._buckets[dim] = TokenBucket(rate, capacity, now)
            elif bucket.rate != rate or bucket.capacity != capacity:
                bucket.reconfigure(rate, capacity, now)

    def _take(self, amounts, dry_run):
        now = self._clock()
        wait = max(0.0, self._blocked_until - now)
        for dim, bucket in self._buckets.items():
            if bucket is not None and amounts[dim] > 0:
                wait = max(wait, bucket.wait_time(amounts[dim], now))
        if wait > 0 or dry_run:
            return wait, now, None
        for dim, bucket in self._buckets.items():
            if bucket is not None:
                bucket.take(amounts[dim], now)
            self._cumulative[dim] += amounts[dim]
        return 0.0, now, dict(self._cumulative)

    def _adjust(self, deltas):
        now = self._clock()
        for dim, delta in deltas.items():
            bucket = self._buckets[dim]
            if bucket is not None and delta:
                bucket.give(delta, now)

    def _lower(self, parsed, learned, reservation):
        now = self._clock()
        if learned:
            self._apply_limits(now)
        lowered = 0
        for dim, values in parsed.items():
            bucket = self._buckets.get(dim)
            if bucket is None or values.remaining is None:
                continue
            estimate = float(values.remaining)
            if reservation is not None and dim in reservation._cumulative:
                taken_since = self._cumulative[dim] - reservation._cumulative[dim]
                elapsed = max(0.0, now - reservation.backend_time)
                estimate = max(estimate - taken_since + bucket.rate * elapsed, min(estimate, 0.0))
            if bucket.lower_to(estimate, now):
                lowered += 1
        return lowered

    def _block(self, seconds):
        now = self._clock()
        self._blocked_until = max(self._blocked_until, now + seconds)
        for bucket in self._buckets.values():
            if bucket is not None:
                bucket.lower_to(0.0, now)

    def _levels(self):
        now = self._clock()
        return {dim: (None if bucket is None else bucket.level(now)) for dim, bucket in self._buckets.items()}


# --------------------------------------------------------------------------
# Redis: one budget for every worker
# --------------------------------------------------------------------------

# Why a hand-written script rather than a library: the candidates on PyPI
# ("limits", "pyrate-limiter", "throttled-py", "token-throttle") either check
# one limit per call (so RPM + ITPM + OTPM would be three non-atomic calls that
# can take from one bucket and then fail on the next), or apply a single weight
# to every rate of a bucket (requests weigh 1 while tokens weigh thousands), or
# keep sliding-window logs instead of a continuously refilling bucket, or are
# asyncio-only; and none can lower a level to a server-reported remaining,
# hold a shared 429 pause, or learn limits. This script does all of that on one
# hash, atomically, with the Redis server's clock (no skew between workers).
#
# KEYS[1]: the hash holding one shared budget. Fields: <dim>:l level,
#   <dim>:t time of that level, <dim>:c tokens taken so far (by everyone),
#   <dim>:lim limit learned from headers, 'blocked' end of a 429 pause,
#   'seen' set once any worker has seen a limit header.
# ARGV: op, ttl_ms, extra, n, then n bucket specs of 9 fields:
#   name, configured limit ('-' = none), learn (0/1), period_s, burst_s,
#   then a, b, c, d whose meaning depends on op ('-' = none):
#   acquire/peek: a = amount;  adjust: a = delta (+ refund, - debit);
#   observe: a = header limit (already times share), b = remaining,
#            c = tokens taken up to the reservation, d = its grant time;
#   penalize: extra = seconds;  levels: nothing.
# Numbers travel as strings ('%.17g'): Lua numbers returned as integers would
# be truncated.
_LUA = r"""
local KEY = KEYS[1]
local op = ARGV[1]
local ttl = tonumber(ARGV[2])
local extra = tonumber(ARGV[3]) or 0
local n = tonumber(ARGV[4])
local STRIDE = 9
local EPS = 1e-9
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

local function fmt(x) return string.format('%.17g', x) end
local function hget(field) return redis.call('HGET', KEY, field) end

if op == 'observe' then
  -- learn first, so this very call already uses the new limits
  for i = 1, n do
    local o = 5 + (i - 1) * STRIDE
    local hl = tonumber(ARGV[o + 5])
    if hl and hl > 0 and ARGV[o + 2] == '1' then
      redis.call('HSET', KEY, ARGV[o] .. ':lim', fmt(hl))
    end
  end
end

local specs = {}
for i = 1, n do
  local o = 5 + (i - 1) * STRIDE
  local s = {name = ARGV[o], cfg = tonumber(ARGV[o + 1]), learn = (ARGV[o + 2] == '1'),
             period = tonumber(ARGV[o + 3]), burst = tonumber(ARGV[o + 4]),
             a = tonumber(ARGV[o + 5]), b = tonumber(ARGV[o + 6]),
             c = tonumber(ARGV[o + 7]), d = tonumber(ARGV[o + 8])}
  local lim = s.cfg
  if s.learn then
    local stored = tonumber(hget(s.name .. ':lim'))
    if stored and (not lim or stored < lim) then lim = stored end
  end
  if lim and lim > 0 then
    s.limit = lim
    s.rate = lim / s.period
    s.cap = s.rate * s.burst
  end
  specs[i] = s
end

local function level_of(s)
  local l = tonumber(hget(s.name .. ':l'))
  if not l then return s.cap end
  local ts = tonumber(hget(s.name .. ':t')) or now
  if now > ts and l < s.cap then l = l + (now - ts) * s.rate end
  if l > s.cap then l = s.cap end
  return l
end

local function store(s, level)
  redis.call('HSET', KEY, s.name .. ':l', fmt(level), s.name .. ':t', fmt(now))
end

local function seen() if hget('seen') then return 1 end return 0 end

if op == 'acquire' or op == 'peek' then
  local wait = 0
  local blocked = tonumber(hget('blocked'))
  if blocked and blocked > now then wait = blocked - now end
  local levels = {}
  for i, s in ipairs(specs) do
    if s.rate and s.a and s.a > 0 then
      local l = level_of(s)
      levels[i] = l
      local need = math.min(s.a, s.cap)
      if l < need - EPS * math.max(1, need) then
        local w = (need - l) / s.rate
        if w > wait then wait = w end
      end
    end
  end
  if wait > 0 or op == 'peek' then
    return {0, fmt(wait), fmt(now), seen()}
  end
  local out = {1, '0', fmt(now), seen()}
  for i, s in ipairs(specs) do
    if levels[i] then store(s, levels[i] - s.a) end
    out[#out + 1] = redis.call('HINCRBYFLOAT', KEY, s.name .. ':c', fmt(s.a or 0))
  end
  redis.call('PEXPIRE', KEY, ttl)
  return out
elseif op == 'adjust' then
  for _, s in ipairs(specs) do
    if s.rate and s.a and s.a ~= 0 then
      local l = level_of(s) + s.a
      if l > s.cap then l = s.cap end
      store(s, l)
    end
  end
  redis.call('PEXPIRE', KEY, ttl)
  return {1}
elseif op == 'observe' then
  local lowered = 0
  local any_limit = false
  for _, s in ipairs(specs) do
    if s.a and s.a > 0 then any_limit = true end
    if s.rate and s.b then
      local est = s.b
      if s.c and s.d then
        local cum = tonumber(hget(s.name .. ':c')) or 0
        est = s.b - (cum - s.c) + s.rate * math.max(0, now - s.d)
        est = math.max(est, math.min(s.b, 0))
      end
      if est < level_of(s) then
        store(s, est)
        lowered = lowered + 1
      end
    end
  end
  if any_limit then redis.call('HSET', KEY, 'seen', '1') end
  redis.call('PEXPIRE', KEY, ttl)
  return {lowered, fmt(now)}
elseif op == 'penalize' then
  local till = now + math.max(0, extra)
  local blocked = tonumber(hget('blocked'))
  if blocked and blocked > till then till = blocked end
  redis.call('HSET', KEY, 'blocked', fmt(till))
  for _, s in ipairs(specs) do
    if s.rate and level_of(s) > 0 then store(s, 0) end
  end
  redis.call('PEXPIRE', KEY, ttl)
  return {fmt(till - now)}
elseif op == 'levels' then
  local out = {fmt(now), fmt(tonumber(hget('blocked')) or 0), seen()}
  for _, s in ipairs(specs) do
    out[#out + 1] = s.limit and fmt(s.limit) or '-'
    out[#out + 1] = s.rate and fmt(level_of(s)) or '-'
    out[#out + 1] = fmt(tonumber(hget(s.name .. ':c')) or 0)
  end
  return out
end
return redis.error_reply('unknown op ' .. tostring(op))
"""


def _num(value: Optional[float]) -> str:
    return "-" if value is None else repr(float(value))


def _float(value: Any) -> float:
    if isinstance(value, bytes):
        value = value.decode()
    return float(value)


class RedisRateLimiter(_LimiterBase):
    """:class:`RateLimiter`'s interface over Redis: every worker shares one budget.

    url:        ``redis://host:port[/db]`` (``rediss://`` for TLS).
    key_prefix: the budget lives in the hash ``<key_prefix>:<name>``; use one
                name per API key and model class.
    poll_s:     a waiting process re-asks Redis at least this often (other
                workers' refunds cannot wake it).
    ttl_s:      the hash expires after this long without writes.
    client:     an existing ``redis.Redis`` instead of ``url``.

    Everything else as :class:`RateLimiter`; bootstrap concurrency is per
    process, and ends when any worker has seen a limit header. Learned
    limits are stored in Redis, so every worker uses them at once. Redis
    errors propagate (a worker never silently runs unlimited); the calls are
    made under this process's lock, one round trip each.
    """

    def __init__(self, url: Optional[str] = None, limits: Optional[Limits] = None, *,
                 key_prefix: str = "claude-ratelimit", name: str = "default",
                 burst_seconds: float = DEFAULT_BURST_SECONDS, learn_from_headers: bool = True,
                 bootstrap_concurrency: int = DEFAULT_BOOTSTRAP_CONCURRENCY,
                 bootstrap_responses: int = DEFAULT_BOOTSTRAP_RESPONSES, share: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Optional[Callable[[float], None]] = None,
                 poll_s: float = DEFAULT_REDIS_POLL_S, ttl_s: float = DEFAULT_REDIS_TTL_S,
                 client: Any = None, socket_timeout: float = 5.0):
        super().__init__(limits, burst_seconds=burst_seconds, learn_from_headers=learn_from_headers,
                         bootstrap_concurrency=bootstrap_concurrency,
                         bootstrap_responses=bootstrap_responses, share=share, clock=clock, sleep=sleep,
                         poll_s=poll_s)
        if client is None:
            if not url or not str(url).startswith(("redis://", "rediss://")):
                raise ValueError(f"Redis URL must look like redis://host:port[/db], got {url!r}")
            import redis  # optional dependency, only needed here

            client = redis.Redis.from_url(url, socket_timeout=socket_timeout,
                                          socket_connect_timeout=socket_timeout)
        if not key_prefix or not name:
            raise ValueError("key_prefix and name must be non-empty")
        self._redis = client
        self.key = f"{key_prefix}:{name}"
        self._script = client.register_script(_LUA)
        self._ttl_ms = int(ttl_s * 1000)

    def _call(self, op: str, fields: Mapping[str, Tuple[Any, ...]] = (), extra: float = 0.0) -> list:
        args = [op, self._ttl_ms, repr(float(extra)), len(_DIMS)]
        for dim in _DIMS:
            configured = self._configured.get(dim)
            learn = "1" if self._learn and dim in _HEADER_DIM.values() else "0"
            burst = _PERIOD_S[dim] if dim == REQUESTS_PER_DAY else self._burst_seconds
            values = tuple(fields.get(dim, ())) if fields else ()
            values = values + (None,) * (4 - len(values))
            args += [dim, _num(configured), learn, repr(_PERIOD_S[dim]), repr(burst)]
            args += [_num(v) for v in values]
        return self._script(keys=[self.key], args=args)

    def _take(self, amounts, dry_run):
        reply = self._call("peek" if dry_run else "acquire", {dim: (amounts[dim],) for dim in _DIMS})
        ok, wait, now, seen = int(reply[0]), _float(reply[1]), _float(reply[2]), int(reply[3])
        if seen and self._bootstrapping:
            self._end_bootstrap("another worker learned the limits")
        if dry_run:
            return wait, now, None
        if not ok:
            # never report "0 s" for a refusal: the caller would spin
            return max(wait, 1e-6), now, None
        cumulative = {dim: _float(value) for dim, value in zip(_DIMS, reply[4:])}
        return 0.0, now, cumulative

    def _adjust(self, deltas):
        if any(deltas.values()):
            self._call("adjust", {dim: (delta,) for dim, delta in deltas.items()})

    def _lower(self, parsed, learned, reservation):
        fields = {}
        for dim in _HEADER_DIM.values():
            values = parsed.get(dim)
            limit = learned.get(dim)
            remaining = values.remaining if values is not None else None
            snap = when = None
            if reservation is not None and dim in reservation._cumulative:
                snap, when = reservation._cumulative[dim], reservation.backend_time
            fields[dim] = (limit, remaining, snap, when)
        if not any(v is not None for values in fields.values() for v in values[:2]):
            return 0
        reply = self._call("observe", fields)
        return int(reply[0])

    def _block(self, seconds):
        self._call("penalize", extra=seconds)

    def _external_bootstrap_done(self) -> bool:
        return bool(self._redis.hexists(self.key, "seen"))

    def _levels(self):
        reply = self._call("levels")
        out: Dict[str, Optional[float]] = {}
        for i, dim in enumerate(_DIMS):
            limit, level = reply[3 + 3 * i], reply[4 + 3 * i]
            if isinstance(level, bytes):
                level = level.decode()
            if isinstance(limit, bytes):
                limit = limit.decode()
            out[dim] = None if level == "-" else float(level)
            if limit != "-" and self._learn and self._configured.get(dim) is None and dim in _HEADER_DIM.values():
                self._learned[dim] = int(float(limit))  # possibly learned by another worker
        return out


# --------------------------------------------------------------------------
# Adaptive concurrency (529 overloaded)
# --------------------------------------------------------------------------

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


# --------------------------------------------------------------------------
# One limiter per process
# --------------------------------------------------------------------------

T = TypeVar("T")
def get_limiter(key: str, factory: Callable[[], T]) -> T:
    """The process-wide limiter for ``key``, created by ``factory()`` on first use.

    Every thread of every DoFn instance in this process that names the same
    key (say, a hash of the API key plus the model class) gets the same
    object, for the life of the process. Call it from ``DoFn.setup()`` and
    keep ``key`` and a picklable ``factory`` (e.g. ``functools.partial(
    RateLimiter, limits)``) on the DoFn.

    Why not ``apache_beam.utils.shared.Shared``: a Shared handle is keyed by a
    uuid made when the handle is constructed, so two transforms (sync and
    packed submit, say) spending the same API budget would get two limiters
    and together overshoot; and it holds its object through a weak reference
    with a single keep-alive slot for the whole process, so when another
    stage acquires its own Shared object the limiter can be garbage
    collected between bundles, losing its debt, a 429 pause and learned
    limits. A rate-limit budget belongs to the process, not to a stage, so a
    plain module-level registry keyed by the budget fits better. (A runner
    that starts several SDK processes per VM gets one limiter per process:
    use RedisRateLimiter, or ``share``, to split the budget.)
    """
    return registry.per_process(("limiter", key), factory)


def create_limiter(limits: Optional[Limits] = None, *, redis_url: Optional[str] = None,
                   key_prefix: str = "claude-ratelimit", name: str = "default", **kwargs: Any):
    """A RedisRateLimiter when ``redis_url`` is given, else a local RateLimiter."""
    if redis_url:
        return RedisRateLimiter(redis_url, limits, key_prefix=key_prefix, name=name, **kwargs)
    return RateLimiter(limits, **kwargs)
