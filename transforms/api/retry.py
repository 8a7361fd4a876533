"""What to do about a failed Claude API call, and the retry loop that does it.

:func:`classify` is a pure function from an ``anthropic`` SDK exception to a
:class:`Decision` (what kind of failure, retry or not, how long the server
asked us to wait). :func:`call_with_retries` is the tenacity loop around one
call: exponential backoff with full jitter, never shorter than the server's
``retry-after``, capped in attempts and in total time, feeding 429s to the
rate limiter and 529s to the concurrency gate.

Run the SDK with ``max_retries=0`` when using this loop: the SDK's own
retries would stack on these (3 x N attempts) and would hide the 429s and
their headers from the limiter.

How the SDK (2.14) exposes a failure, read from its source:
``APIStatusError`` (and its subclasses ``RateLimitError``, ``OverloadedError``
...) carries ``status_code``, ``response`` (an ``httpx2.Response``: headers
are case-insensitive) and, from the body, ``type`` (``error.type``) and
``error_code`` (``error.details.error_code``, e.g.
``enforced_spend_limit_reached``); ``APITimeoutError`` is a subclass of
``APIConnectionError`` and has no response.
"""
from __future__ import annotations

import collections
import dataclasses
import email.utils
import enum
import math
import re
import sys
import time
from typing import Any, Callable, Mapping, Optional, TypeVar

import tenacity

__all__ = [
    "Kind",
    "Decision",
    "RetryEvent",
    "RetryStats",
    "classify",
    "parse_retry_after",
    "make_retrying",
    "call_with_retries",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MAX_TOTAL_S",
]

#: Attempts per call, the first included: enough to ride out a 429 storm or a
#: short overload, few enough that a dead endpoint fails a bundle in minutes.
DEFAULT_MAX_ATTEMPTS = 6
#: Wall-clock cap on one call with its retries: never sleep past it.
DEFAULT_MAX_TOTAL_S = 600.0
#: Backoff ceiling at attempt n is min(MAX, INITIAL * 2**(n-1)); the actual
#: wait is uniform in [0, ceiling] (full jitter, so that workers that failed
#: together do not retry together).
DEFAULT_INITIAL_BACKOFF_S = 1.0
DEFAULT_MAX_BACKOFF_S = 60.0

#: 429 error codes of a spend cap: waiting does not help until the cap resets.
_SPEND_LIMIT_CODES = frozenset({"enforced_spend_limit_reached", "contract_spend_limit_reached",
                                "linked_organization_spend_limit_reached"})
#: 429 error codes of a true rate limit, retryable even without retry-after.
_RATE_LIMIT_CODES = frozenset({"ramp_limit_exceeded"})
#: A 400 whose message says the prompt exceeds the context window: splitting
#: the pack helps, retrying it as is never does. There is no error code for it,
#: so this matches the message the API has used for years; a miss only means
#: the item is dead-lettered as FATAL instead of split.
_PROMPT_TOO_LONG = re.compile(r"prompt is too long|too many (input )?tokens|exceeds? the context",
                              re.IGNORECASE)


class Kind(str, enum.Enum):
    """The kinds of failure the pipeline reacts to differently."""

    RATE_LIMITED = "rate_limited"   # 429 with retry-after: wait it, tell the limiter
    SPEND_LIMIT = "spend_limit"     # 429 without retry-after (or a spend-cap code): stop submitting
    OVERLOADED = "overloaded"       # 529: back off, lower concurrency
    SERVER = "server"               # 500/502/503/504 and other 5xx
    TIMEOUT = "timeout"             # client timeout, 408, 499
    CONNECTION = "connection"       # connection refused / reset / dropped
    CONFLICT = "conflict"           # 409: retryable (the SDK retries it too)
    TOO_LARGE = "too_large"         # 413 or prompt too long: split the pack, no retry
    FATAL = "fatal"                 # other 4xx and non-API errors: dead letter


@dataclasses.dataclass(frozen=True)
class Decision:
    """What to do about one failure.

    retryable:     send the same request again (after a wait).
    retry_after_s: the server's ``retry-after-ms`` / ``retry-after``, if any.
    halt:          no request of this run can succeed (spend cap, bad key,
                   billing): stop submitting rather than dead-letter item by item.
    reason:        short and safe for a dead-letter row: kind, status, the
                   API's error type and code. Never the message text (it can
                   echo request content) nor any header.
    """

    kind: Kind
    retryable: bool
    retry_after_s: Optional[float] = None
    status_code: Optional[int] = None
    error_type: Optional[str] = None
    error_code: Optional[str] = None
    request_id: Optional[str] = None
    halt: bool = False
    reason: str = ""


def parse_retry_after(headers: Optional[Mapping[str, str]], *, now: Optional[float] = None
                      ) -> Optional[float]:
    """Seconds to wait from ``retry-after-ms``, else ``retry-after`` (seconds or HTTP date).

    Like the SDK: the millisecond header wins. Missing, unparsable, negative,
    NaN or infinite values give None; a date in the past gives 0.
    """
    if not headers:
        return None
    getter = getattr(headers, "get", None)
    if getter is None:
        return None

    def _get(name: str) -> Optional[str]:
        value = getter(name)
        if value is None and not hasattr(headers, "multi_items"):
            # a plain dict is case-sensitive; httpx Headers are not
            for key, candidate in headers.items():
                if str(key).lower() == name:
                    return candidate
        return value

    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = _get(name)
        if raw is None:
            continue
        try:
            seconds = float(str(raw).strip()) / scale
        except ValueError:
            seconds = None
            if scale == 1.0:
                parsed = email.utils.parsedate_tz(str(raw))
                if parsed is not None:
                    current = time.time() if now is None else now
                    seconds = max(0.0, email.utils.mktime_tz(parsed) - current)
        if seconds is not None and math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None


def _headers_of(exc: BaseException) -> Optional[Mapping[str, str]]:
    response = getattr(exc, "response", None)
    return getattr(response, "headers", None)


def classify(exc: BaseException) -> Decision:
    """Classify an exception raised by the ``anthropic`` SDK (or anything else).

    ============================== ============ =========
    failure                        kind         retryable
    ============================== ============ =========
    APITimeoutError, 408, 499      TIMEOUT      yes
    APIConnectionError             CONNECTION   yes
    429 + retry-after (any value)  RATE_LIMITED yes
    429 without retry-after        SPEND_LIMIT  no (halt)
    529                            OVERLOADED   yes
    5xx (500, 502, 503, 504, ...)  SERVER       yes
    409                            CONFLICT     yes
    413, 400 "prompt is too long"  TOO_LARGE    no
    401, 402                       FATAL        no (halt)
    other 4xx, anything else       FATAL        no
    ============================== ============ =========

    A 429's error code refines the rule: spend-cap codes are SPEND_LIMIT even
    with a retry-after, ``ramp_limit_exceeded`` is RATE_LIMITED even without.
    A server's ``x-should-retry: false`` makes any kind non-retryable;
    ``true`` makes it retryable except TOO_LARGE and SPEND_LIMIT (resending
    the same oversized request, or spending past a cap, cannot succeed).
    """
    # The SDK as loaded, never imported here: a process that has not imported
    # it cannot hold one of its errors.
    anthropic = sys.modules.get("anthropic")
    if anthropic is None:
        return Decision(Kind.FATAL, False, reason="fatal: " + type(exc).__name__)
    if isinstance(exc, anthropic.APITimeoutError):
        return Decision(Kind.TIMEOUT, True, reason="timeout: client-side timeout")
    if isinstance(exc, anthropic.APIConnectionError):
        return Decision(Kind.CONNECTION, True, reason="connection: " + type(exc).__name__)
    if not isinstance(exc, anthropic.APIStatusError):
        if isinstance(exc, anthropic.RetryableError):
            return Decision(Kind.SERVER, True, reason="server: " + type(exc).__name__)
        return Decision(Kind.FATAL, False, reason="fatal: " + type(exc).__name__)

    status = _status_of(exc)
    headers = _headers_of(exc)
    retry_after = parse_retry_after(headers)
    # A retry-after that is present but unparsable still says "rate limit,
    # come back later" (the wait then falls back to backoff).
    asked_to_wait = retry_after is not None or _has_header(headers, "retry-after", "retry-after-ms")
    error_type = _str_or_none(getattr(exc, "type", None))
    error_code = _str_or_none(getattr(exc, "error_code", None))
    request_id = _str_or_none(getattr(exc, "request_id", None))

    halt = False
    if status == 429:
        if error_code in _SPEND_LIMIT_CODES:
            kind, retryable, halt = Kind.SPEND_LIMIT, False, True
        elif asked_to_wait or error_code in _RATE_LIMIT_CODES:
            kind, retryable = Kind.RATE_LIMITED, True
        else:
            kind, retryable, halt = Kind.SPEND_LIMIT, False, True
    elif status == 529:
        kind, retryable = Kind.OVERLOADED, True
    elif status == 413:
        kind, retryable = Kind.TOO_LARGE, False
    elif status in (408, 499):
        kind, retryable = Kind.TIMEOUT, True
    elif status == 409:
        kind, retryable = Kind.CONFLICT, True
    elif status is not None and status >= 500:
        kind, retryable = Kind.SERVER, True
    elif status == 400 and _PROMPT_TOO_LONG.search(_api_message(exc)):
        kind, retryable = Kind.TOO_LARGE, False
    else:
        kind, retryable = Kind.FATAL, False
        halt = status in (401, 402)

    should_retry = None
    if headers is not None:
        should_retry = str(headers.get("x-should-retry") or "").strip().lower()
    if should_retry == "false":
        retryable = False
    elif should_retry == "true" and kind not in (Kind.TOO_LARGE, Kind.SPEND_LIMIT):
        retryable = True

    parts = [kind.value, str(status)]
    parts += [part for part in (error_type, error_code) if part]
    return Decision(kind, retryable, retry_after_s=retry_after, status_code=status, error_type=error_type,
                    error_code=error_code, request_id=request_id, halt=halt, reason=": ".join(parts))


def _has_header(headers: Optional[Mapping[str, str]], *names: str) -> bool:
    if not headers:
        return False
    present = {str(key).lower() for key in headers.keys()}
    return any(name in present for name in names)


def _status_of(exc: BaseException) -> Optional[int]:
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int):
        status = getattr(getattr(exc, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def _str_or_none(value: Any) -> Optional[str]:
    return value if isinstance(value, str) and value else None


def _api_message(exc: BaseException) -> str:
    message = getattr(exc, "api_message", None)
    if not isinstance(message, str):
        message = getattr(exc, "message", None)
    return message if isinstance(message, str) else ""


# --------------------------------------------------------------------------
# The retry loop
# --------------------------------------------------------------------------

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class RetryEvent:
    """Passed to ``on_retry`` before each sleep."""

    attempt: int             # the attempt that just failed (1-based)
    decision: Decision
    wait_s: float            # the sleep about to happen
    exception: BaseException


@dataclasses.dataclass
class RetryStats:
    """Filled in by the loop: pass one in to read the attempts of a call.

    attempts: calls of fn; retries: sleeps between them; slept_s: their total;
    by_kind: failures counted by :class:`Kind`; last_decision: the latest one.
    """

    attempts: int = 0
    retries: int = 0
    slept_s: float = 0.0
    by_kind: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    last_decision: Optional[Decision] = None


class _StopBeforeDeadline(tenacity.stop.stop_base):
    """Stop when the next attempt would start after ``max_total_s`` (injectable clock).

    Like tenacity's ``stop_before_delay``, which reads ``time.monotonic``
    directly and so cannot be driven by a fake clock in tests.
    """

    def __init__(self, max_total_s: float, clock: Callable[[], float]):
        self.max_total_s = max_total_s
        self.clock = clock

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        started = getattr(retry_state, "_pipeline_started", None)
        if started is None:
            return False
        return self.clock() - started + retry_state.upcoming_sleep > self.max_total_s


def make_retrying(*, limiter: Any = None, gate: Any = None, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                  max_total_s: float = DEFAULT_MAX_TOTAL_S,
                  initial_backoff_s: float = DEFAULT_INITIAL_BACKOFF_S,
                  max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
                  on_retry: Optional[Callable[[RetryEvent], None]] = None,
                  stats: Optional[RetryStats] = None,
                  sleep: Callable[[float], None] = time.sleep,
                  clock: Callable[[], float] = time.monotonic) -> tenacity.Retrying:
    """A tenacity ``Retrying`` with the pipeline's policy (see :func:`call_with_retries`).

    Every failed attempt is classified once, in the ``retry`` predicate, which
    also tells the limiter (headers of the error response; a 429's pause) and
    the gate (a 529) -- even for the last attempt, since other threads keep
    sending.
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be >= 1")
    if not max_total_s > 0:
        raise ValueError("max_total_s must be > 0")
    stats = stats if stats is not None else RetryStats()
    backoff = tenacity.wait_random_exponential(multiplier=initial_backoff_s, max=max_backoff_s)

    def _before(retry_state: tenacity.RetryCallState) -> None:
        if retry_state.attempt_number == 1:
            retry_state._pipeline_started = clock()  # type: ignore[attr-defined]
        stats.attempts += 1

    def _retry(retry_state: tenacity.RetryCallState) -> bool:
        outcome = retry_state.outcome
        if outcome is None or not outcome.failed:
            return False
        exc = outcome.exception()
        decision = classify(exc)
        retry_state._pipeline_decision = decision  # type: ignore[attr-defined]
        stats.by_kind[decision.kind] += 1
        stats.last_decision = decision
        _react(decision, exc, limiter, gate)
        return decision.retryable

    def _wait(retry_state: tenacity.RetryCallState) -> float:
        decision = getattr(retry_state, "_pipeline_decision", None)
        jittered = backoff(retry_state)
        server = decision.retry_after_s if decision is not None and decision.retry_after_s else 0.0
        return max(jittered, server)

    def _before_sleep(retry_state: tenacity.RetryCallState) -> None:
        wait_s = retry_state.upcoming_sleep
        stats.retries += 1
        stats.slept_s += wait_s
        if on_retry is not None and retry_state.outcome is not None:
            on_retry(RetryEvent(retry_state.attempt_number, retry_state._pipeline_decision,  # type: ignore
                                wait_s, retry_state.outcome.exception()))

    return tenacity.Retrying(
        sleep=sleep,
        stop=tenacity.stop_after_attempt(max_attempts) | _StopBeforeDeadline(max_total_s, clock),
        wait=_wait,
        retry=_retry,
        before=_before,
        before_sleep=_before_sleep,
        reraise=True,
    )


def _react(decision: Decision, exc: BaseException, limiter: Any, gate: Any) -> None:
    """Feed a failure to the shared limiter and gate."""
    if limiter is not None:
        headers = _headers_of(exc)
        if headers is not None:
            limiter.observe_headers(headers)
        if decision.kind is Kind.RATE_LIMITED:
            # with no retry-after (a ramp limit), drain without a pause
            limiter.penalize(decision.retry_after_s or 0.0)
    if gate is not None and decision.kind is Kind.OVERLOADED:
        gate.backoff()


def call_with_retries(fn: Callable[[], T], *, limiter: Any = None, gate: Any = None,
                      max_attempts: int = DEFAULT_MAX_ATTEMPTS, max_total_s: float = DEFAULT_MAX_TOTAL_S,
                      initial_backoff_s: float = DEFAULT_INITIAL_BACKOFF_S,
                      max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
                      on_retry: Optional[Callable[[RetryEvent], None]] = None,
                      stats: Optional[RetryStats] = None,
                      sleep: Callable[[float], None] = time.sleep,
                      clock: Callable[[], float] = time.monotonic) -> T:
    """Call ``fn()`` until it succeeds, fails for good, or runs out of attempts or time.

    * Only retryable kinds (see :func:`classify`) are retried; anything else
      is raised at once.
    * The wait before attempt n+1 is uniform in
      ``[0, min(max_backoff_s, initial_backoff_s * 2**(n-1))]`` (full jitter),
      raised to the server's ``retry-after`` when it sent one.
    * At most ``max_attempts`` attempts; no sleep that would end after
      ``max_total_s`` from the first attempt (it stops instead).
    * A 429 makes ``limiter.penalize(retry_after)`` pause every thread that
      shares the limiter; error responses' rate-limit headers are observed;
      a 529 makes ``gate.backoff()`` lower the concurrency.
    * With a ``gate``, each attempt runs inside one of its slots (released
      during the sleep between attempts).
    * ``fn`` does its own ``limiter.acquire`` / ``settle``: only it knows the
      token estimate and the real usage.

    Returns ``fn``'s result or raises the last exception. ``stats`` (a
    :class:`RetryStats`) receives the attempt count either way.
    """
    stats = stats if stats is not None else RetryStats()
    retrying = make_retrying(limiter=limiter, gate=gate, max_attempts=max_attempts, max_total_s=max_total_s,
                             initial_backoff_s=initial_backoff_s, max_backoff_s=max_backoff_s,
                             on_retry=on_retry, stats=stats, sleep=sleep, clock=clock)

    def _attempt() -> T:
        if gate is None:
            return fn()
        with gate.slot():
            return fn()

    return retrying(_attempt)
