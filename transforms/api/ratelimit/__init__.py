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

The package, one module per concern:

* ``buckets``     -- :class:`Limits`, :class:`TokenBucket`, the dimension names.
* ``headers``     -- :func:`parse_ratelimit_headers`, :class:`HeaderLimits`.
* ``reservation`` -- :class:`Reservation`, :class:`Settlement`, :class:`AcquireTimeout`.
* ``base``        -- the limiter logic both backends share.
* ``local``       -- :class:`RateLimiter` (this process).
* ``shared``      -- :class:`RedisRateLimiter` (every worker; ``budget.lua``).
* ``gate``        -- :class:`ConcurrencyGate`, :class:`GateTimeout`.
* ``factory``     -- :func:`get_limiter`, :func:`create_limiter`.

Import from the package (``from transforms.api.ratelimit import RateLimiter``),
not from the modules: the split is an implementation detail.
"""
from __future__ import annotations

# the defaults stay attributes of the package, as they were of the single module
from transforms.api.ratelimit.base import DEFAULT_BOOTSTRAP_CONCURRENCY, DEFAULT_BOOTSTRAP_RESPONSES  # noqa: F401
from transforms.api.ratelimit.buckets import (DEFAULT_BURST_SECONDS, INPUT_TOKENS, OUTPUT_TOKENS, REQUESTS,
                                          REQUESTS_PER_DAY, Limits, TokenBucket)
from transforms.api.ratelimit.factory import create_limiter, get_limiter
from transforms.api.ratelimit.gate import ConcurrencyGate, GateTimeout
from transforms.api.ratelimit.headers import HeaderLimits, parse_ratelimit_headers
from transforms.api.ratelimit.local import RateLimiter
from transforms.api.ratelimit.reservation import AcquireTimeout, Reservation, Settlement
from transforms.api.ratelimit.shared import DEFAULT_REDIS_POLL_S, DEFAULT_REDIS_TTL_S, RedisRateLimiter  # noqa: F401

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
    "DEFAULT_BURST_SECONDS",
]
