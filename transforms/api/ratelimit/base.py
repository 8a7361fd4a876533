"""The limiter logic both backends share: waiting, fairness, bootstrap, learning, stats.

:class:`_LimiterBase` implements the public limiter API (``acquire``,
``observe_headers``, ``penalize``, ``stats``, ...) over five backend hooks
that keep the buckets: in this process (:mod:`transforms.api.ratelimit.local`) or
in Redis for every worker (:mod:`transforms.api.ratelimit.shared`).
"""
from __future__ import annotations

import collections
import dataclasses
import datetime
import itertools
import logging
import math
import threading
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from transforms.api.ratelimit.buckets import (_DIMS, _PERIOD_S, INPUT_TOKENS, OUTPUT_TOKENS, REQUESTS,
                                          REQUESTS_PER_DAY, Limits)
from transforms.api.ratelimit.headers import _HEADER_DIM, HeaderLimits, parse_ratelimit_headers
from transforms.api.ratelimit.reservation import AcquireTimeout, Reservation, Settlement

# the logger of the former single module, so log configuration keeps working
_LOG = logging.getLogger(__package__)

#: Requests in flight allowed per process while a limit is still unknown and
#: waiting to be learned from the first response's headers.
DEFAULT_BOOTSTRAP_CONCURRENCY = 1
#: Responses observed without any ``anthropic-ratelimit-*-limit`` header after
#: which learning gives up (a proxy or an emulator that sends none) and the
#: unknown dimensions run unlimited, 429s being the only brake left.
DEFAULT_BOOTSTRAP_RESPONSES = 3


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
