"""The limiter shared by every worker: :class:`RedisRateLimiter`, one budget in one Redis hash.

Same interface as :class:`~transforms.api.ratelimit.local.RateLimiter`; every
operation is one atomic call of the Lua script in ``budget.lua`` (next to
this module, shipped as package data), timed by the Redis server's clock.
"""
from __future__ import annotations

import time
from importlib import resources
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from transforms.api.ratelimit.base import (DEFAULT_BOOTSTRAP_CONCURRENCY, DEFAULT_BOOTSTRAP_RESPONSES,
                                       _LimiterBase)
from transforms.api.ratelimit.buckets import _DIMS, _PERIOD_S, DEFAULT_BURST_SECONDS, REQUESTS_PER_DAY, Limits
from transforms.api.ratelimit.headers import _HEADER_DIM

#: How often a waiting RedisRateLimiter re-asks Redis: other processes refund
#: and learn without being able to wake this one.
DEFAULT_REDIS_POLL_S = 0.25
#: Redis state expires after this long without any write (two days: longer
#: than the requests-per-day bucket needs).
DEFAULT_REDIS_TTL_S = 2 * 86400

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
# The script, its hash fields and its arguments are described in budget.lua.
_LUA = resources.files(__package__).joinpath("budget.lua").read_text(encoding="utf-8")


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
