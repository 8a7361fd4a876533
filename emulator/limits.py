"""Rate limits as the API enforces them: continuous token buckets per model.

Each limit (requests, input tokens, output tokens per minute) is a bucket of
`capacity = limit/60 * bucket_capacity_s` (at least 1) that refills at
limit/60 per second, never as a window reset each minute. A Messages call
needs 1 request and its uncached input tokens (input + cache writes; cache
reads are free) up front; output tokens are charged after the answer, so
the output bucket can go negative and then holds later calls back. A call
larger than a whole bucket is let through when the bucket is full (and
drives it negative) rather than refused forever.

Limits run on real time (time_scale does not change them): set a high limit
or a small bucket in tests.

A limit left unset (None) is not enforced, but the headers still report one,
as the API sends them on every answer: `default_rpm/itpm/otpm` (see
emulator/config.py), tracked by a bucket that is charged like the
others and never refuses, holding a minute's worth as the API's does.
"""
from __future__ import annotations

import math
import time
from typing import Dict, Optional, Tuple

from emulator.timeutil import rfc3339

#: header name part -> (config field, words for the 429 message)
KINDS = {
    "requests": ("rpm", "requests per minute (RPM)"),
    "input-tokens": ("itpm", "input tokens per minute (ITPM)"),
    "output-tokens": ("otpm", "output tokens per minute (OTPM)"),
}
#: Capacity, in seconds of refill, of a bucket that only reports a default limit.
REPORTED_CAPACITY_S = 60.0


class TokenBucket:
    def __init__(self, per_minute: float, capacity_s: float, enforced: bool = True):
        self.enforced = enforced
        self.limit = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(self.rate * capacity_s, 1.0)
        self.level = self.capacity
        self.t = time.monotonic()

    def refill(self, now: float) -> None:
        if now > self.t:
            self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
            self.t = now

    def wait_for(self, need: float) -> float:
        """Seconds until `need` (capped at capacity) is available; 0 if now."""
        need = min(need, self.capacity)
        if self.level >= need:
            return 0.0
        return (need - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount

    def remaining(self) -> int:
        return max(0, int(math.floor(self.level)))

    def full_at_wall(self, now: float) -> float:
        return time.time() + max(0.0, self.capacity - self.level) / self.rate + (self.t - now)


class RateLimiter:
    """Buckets per model, created on first use from the config."""

    def __init__(self, config):
        self.config = config
        self.buckets: Dict[str, Dict[str, TokenBucket]] = {}

    def _limits(self, model: str) -> Dict[str, Optional[float]]:
        base = {"rpm": self.config.rpm, "itpm": self.config.itpm, "otpm": self.config.otpm}
        override = (self.config.model_limits or {}).get(model) or {}
        base.update({k: v for k, v in override.items() if k in base})
        return base

    def for_model(self, model: str) -> Dict[str, TokenBucket]:
        b = self.buckets.get(model)
        if b is None:
            limits = self._limits(model)
            cfg = self.config
            b = {kind: TokenBucket(limits[field], cfg.bucket_capacity_s) if limits[field] is not None
                 else TokenBucket(getattr(cfg, "default_" + field), REPORTED_CAPACITY_S, enforced=False)
                 for kind, (field, _) in KINDS.items()}
            self.buckets[model] = b
        now = time.monotonic()
        for bucket in b.values():
            bucket.refill(now)
        return b

    def check(self, model: str, input_tokens: int) -> Optional[Tuple[str, int]]:
        """None if the call may go ahead, else (message, retry_after seconds)."""
        b = self.for_model(model)
        need = {"requests": 1, "input-tokens": input_tokens, "output-tokens": 1}
        worst: Optional[Tuple[float, str]] = None
        for kind, bucket in b.items():
            if not bucket.enforced:
                continue
            wait = bucket.wait_for(need[kind])
            if wait > 0 and (worst is None or wait > worst[0]):
                worst = (wait, kind)
        if worst is None:
            return None
        wait, kind = worst
        field, words = KINDS[kind]
        limit = b[kind].limit
        message = (f"This request would exceed the rate limit for your organization of "
                   f"{limit:g} {words} for model {model}. For details, refer to "
                   f"https://docs.claude.com/en/api/rate-limits. (emulator: {field} bucket)")
        return message, max(1, int(math.ceil(wait)))

    def charge(self, model: str, input_tokens: int) -> None:
        b = self.for_model(model)
        if "requests" in b:
            b["requests"].take(1)
        if "input-tokens" in b:
            b["input-tokens"].take(input_tokens)

    def charge_output(self, model: str, output_tokens: int) -> None:
        b = self.for_model(model)
        if "output-tokens" in b:
            b["output-tokens"].take(output_tokens)

    def headers(self, model: str) -> Dict[str, str]:
        """anthropic-ratelimit-* headers for the configured limits of `model`."""
        b = self.for_model(model)
        now = time.monotonic()
        out: Dict[str, str] = {}
        for kind, bucket in b.items():
            out[f"anthropic-ratelimit-{kind}-limit"] = str(int(bucket.limit))
            out[f"anthropic-ratelimit-{kind}-remaining"] = str(bucket.remaining())
            out[f"anthropic-ratelimit-{kind}-reset"] = rfc3339(bucket.full_at_wall(now))
        tokens = [b[k] for k in ("input-tokens", "output-tokens") if k in b]
        if tokens:
            tightest = min(tokens, key=lambda x: x.remaining() / max(x.capacity, 1.0))
            out["anthropic-ratelimit-tokens-limit"] = str(int(tightest.limit))
            out["anthropic-ratelimit-tokens-remaining"] = str(tightest.remaining())
            out["anthropic-ratelimit-tokens-reset"] = rfc3339(tightest.full_at_wall(now))
        return out
