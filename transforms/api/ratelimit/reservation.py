"""What a limiter hands out: a :class:`Reservation` and how it ends.

A reservation holds one request's capacity (1 request, its input and expected
output tokens) until it is settled with the real usage or released; settling
returns a :class:`Settlement`. :class:`AcquireTimeout` is raised when no
reservation could be made in time.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Protocol

from transforms.api.ratelimit.headers import HeaderLimits


class _Issuer(Protocol):
    """What a reservation needs of the limiter that granted it (a Protocol, so
    this module does not import the limiter that imports it)."""

    def _finish(self, reservation: "Reservation", actual_input: float, actual_output: float,
                release: bool) -> "Settlement": ...

    def observe_headers(self, headers: Optional[Mapping[str, str]],
                        reservation: Optional["Reservation"] = None) -> Dict[str, HeaderLimits]: ...


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

    def __init__(self, limiter: _Issuer, input_tokens: float, output_tokens: float,
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
