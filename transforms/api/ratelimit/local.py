"""The per-process limiter: :class:`RateLimiter`, one :class:`TokenBucket` per dimension.

Thread-safe; one per process and budget (see
:func:`transforms.api.ratelimit.get_limiter`). For a budget shared by several
worker processes see :mod:`transforms.api.ratelimit.shared`.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Dict, Optional

from transforms.api.ratelimit.base import (DEFAULT_BOOTSTRAP_CONCURRENCY, DEFAULT_BOOTSTRAP_RESPONSES,
                                       _LimiterBase)
from transforms.api.ratelimit.buckets import _DIMS, DEFAULT_BURST_SECONDS, Limits, TokenBucket, _bucket_shape


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
