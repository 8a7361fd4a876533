"""transforms.api.ratelimit: bucket math, the limiter, the gate, the registry, Redis.

Time-dependent behaviour is tested on a fake clock. The few real-time tests
assert budget invariants (never more granted than the buckets allow over any
interval), never speeds. The Redis tests run a real redis-server (see
tests/redis_server.py) and two separate OS processes sharing one budget.
"""
from __future__ import annotations

import datetime
import functools
import itertools
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import List, Sequence, Tuple

import pytest
from hypothesis import given, settings, strategies as st

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests import redis_server  # noqa: E402
from transforms.api.ratelimit import (INPUT_TOKENS, OUTPUT_TOKENS, REQUESTS, REQUESTS_PER_DAY,  # noqa: E402
                                  AcquireTimeout, ConcurrencyGate, GateTimeout, HeaderLimits, Limits,
                                  RateLimiter, RedisRateLimiter, Settlement, TokenBucket, create_limiter,
                                  get_limiter, parse_ratelimit_headers)


class FakeClock:
    """A thread-safe fake monotonic clock whose sleep advances it."""

    def __init__(self, start: float = 1000.0):
        self._now = start
        self._lock = threading.Lock()
        self.sleeps: List[float] = []

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self._now += max(0.0, seconds)

    advance = sleep


def limiter(limits: Limits, clock: FakeClock, **kwargs) -> RateLimiter:
    return RateLimiter(limits, clock=clock, sleep=clock.sleep, **kwargs)


def assert_within_budget(grants: Sequence[Tuple[float, float]], rate: float, capacity: float,
                         tolerance: float = 1e-6) -> None:
    """Every interval [t_i, t_j] of grants took at most capacity + rate * (t_j - t_i)."""
    grants = sorted(grants)
    for i in range(len(grants)):
        total = 0.0
        for j in range(i, len(grants)):
            total += grants[j][1]
            allowed = capacity + rate * (grants[j][0] - grants[i][0]) + tolerance
            assert total <= allowed, (
                f"{total} granted in [{grants[i][0]}, {grants[j][0]}] > {allowed}")


# --------------------------------------------------------------------------
# TokenBucket
# --------------------------------------------------------------------------

def test_bucket_starts_full_and_refills_continuously_up_to_capacity():
    bucket = TokenBucket(rate=10.0, capacity=30.0, now=0.0)
    assert bucket.level(0.0) == 30.0
    bucket.take(30.0, 0.0)
    assert bucket.level(0.5) == pytest.approx(5.0)      # continuous: not a per-minute reset
    assert bucket.level(1.25) == pytest.approx(12.5)
    assert bucket.level(100.0) == 30.0                  # capped


def test_bucket_wait_time():
    bucket = TokenBucket(rate=4.0, capacity=8.0, now=0.0, level=0.0)
    assert bucket.wait_time(2.0, 0.0) == pytest.approx(0.5)
    assert bucket.wait_time(2.0, 0.5) == 0.0
    assert bucket.wait_time(0.0, 0.0) == 0.0


def test_bucket_request_larger_than_capacity_waits_for_full_then_goes_into_debt():
    bucket = TokenBucket(rate=1.0, capacity=5.0, now=0.0, level=2.0)
    assert bucket.wait_time(12.0, 0.0) == pytest.approx(3.0)  # until full, not until 12
    bucket.take(12.0, 3.0)
    assert bucket.level(3.0) == pytest.approx(-7.0)
    assert bucket.wait_time(1.0, 3.0) == pytest.approx(8.0)   # the debt is paid first


def test_bucket_give_is_capped_and_negative_give_debits():
    bucket = TokenBucket(rate=1.0, capacity=10.0, now=0.0, level=4.0)
    bucket.give(100.0, 0.0)
    assert bucket.level(0.0) == 10.0
    bucket.give(-15.0, 0.0)
    assert bucket.level(0.0) == -5.0


def test_bucket_lower_to_only_lowers():
    bucket = TokenBucket(rate=1.0, capacity=10.0, now=0.0, level=6.0)
    assert not bucket.lower_to(8.0, 0.0)
    assert bucket.level(0.0) == 6.0
    assert bucket.lower_to(2.0, 0.0)
    assert bucket.level(0.0) == 2.0


def test_bucket_reconfigure_keeps_level_within_new_capacity():
    bucket = TokenBucket(rate=10.0, capacity=100.0, now=0.0)
    bucket.reconfigure(1.0, 5.0, 0.0)
    assert bucket.level(0.0) == 5.0
    bucket.take(5.0, 0.0)
    assert bucket.level(2.0) == pytest.approx(2.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 5), st.floats(0, 40)), min_size=1, max_size=30))
def test_bucket_never_grants_more_than_capacity_plus_refill(steps):
    """Whatever the arrival pattern, what is granted fits the budget."""
    rate, capacity = 10.0, 20.0
    bucket = TokenBucket(rate, capacity, now=0.0)
    now, grants = 0.0, []
    for dt, amount in steps:
        now += dt
        amount = min(amount, capacity)
        wait = bucket.wait_time(amount, now)
        now += wait
        assert bucket.wait_time(amount, now) == 0.0
        bucket.take(amount, now)
        grants.append((now, amount))
    assert_within_budget(grants, rate, capacity, tolerance=1e-6)


def test_invalid_buckets_and_limits_are_rejected():
    with pytest.raises(ValueError):
        TokenBucket(0, 1, 0.0)
    with pytest.raises(ValueError):
        Limits(rpm=0)
    with pytest.raises(ValueError):
        Limits(itpm=-5)
    with pytest.raises(ValueError):
        Limits(otpm=1.5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# Headers
# --------------------------------------------------------------------------

def test_parse_ratelimit_headers():
    parsed = parse_ratelimit_headers({
        "Anthropic-RateLimit-Requests-Limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": "2026-01-01T00:00:01Z",
        "anthropic-ratelimit-input-tokens-limit": "40000",
        "anthropic-ratelimit-input-tokens-remaining": "garbage",
        "anthropic-ratelimit-output-tokens-remaining": "-4",
        "anthropic-ratelimit-output-tokens-reset": "not a date",
        "anthropic-ratelimit-tokens-limit": "48000",    # the combined one: ignored
        "retry-after": "3",
    })
    assert parsed == {
        REQUESTS: HeaderLimits(limit=50, remaining=49,
                               reset=datetime.datetime(2026, 1, 1, 0, 0, 1, tzinfo=datetime.timezone.utc)),
        INPUT_TOKENS: HeaderLimits(limit=40000),
    }
    assert parse_ratelimit_headers(None) == {}
    assert parse_ratelimit_headers({}) == {}


# --------------------------------------------------------------------------
# RateLimiter on a fake clock
# --------------------------------------------------------------------------

def test_acquire_waits_exactly_for_refill():
    clock = FakeClock()
    lim = limiter(Limits(rpm=60, itpm=6000, otpm=6000), clock, burst_seconds=2.0)  # 1 req/s, cap 2
    lim.acquire(10, 10)
    lim.acquire(10, 10)
    start = clock()
    reservation = lim.acquire(10, 10)
    assert clock() - start == pytest.approx(1.0)
    assert reservation.waited_s == pytest.approx(1.0)
    assert lim.throttled_seconds == pytest.approx(1.0)
    assert lim.stats()["waits"] == 1


def test_acquire_is_all_or_nothing_across_buckets():
    clock = FakeClock()
    lim = limiter(Limits(rpm=600, itpm=600, otpm=6000), clock, burst_seconds=1.0)  # ITPM cap 10
    before = lim.levels()
    assert lim.try_acquire(input_tokens=50, output_tokens=5) is not None  # > cap: allowed when full
    levels = lim.levels()
    assert levels[REQUESTS] == pytest.approx(before[REQUESTS] - 1)
    assert levels[INPUT_TOKENS] == pytest.approx(-40.0)                   # in debt
    # now ITPM cannot cover anything: nothing at all may be taken
    assert lim.try_acquire(input_tokens=1, output_tokens=1) is None
    assert lim.levels() == levels                                         # untouched
    assert lim.estimate_wait(1, 1) == pytest.approx(41 / 10.0)


def test_settle_refunds_and_debits():
    clock = FakeClock()
    lim = limiter(Limits(rpm=600, itpm=60000, otpm=60000), clock, burst_seconds=1.0)  # caps 1000
    reservation = lim.acquire(400, 300)
    levels = lim.levels()
    assert (levels[INPUT_TOKENS], levels[OUTPUT_TOKENS]) == (600, 700)
    assert reservation.settle(100, 450) == Settlement(input_tokens=300, output_tokens=-150)
    levels = lim.levels()
    assert (levels[INPUT_TOKENS], levels[OUTPUT_TOKENS]) == (900, 550)
    with pytest.raises(RuntimeError):
        reservation.settle(1, 1)
    assert lim.in_flight == 0
    stats = lim.stats()
    assert stats["refunded_input_tokens"] == 300 and stats["extra_output_tokens"] == 150


def test_refund_never_exceeds_capacity():
    clock = FakeClock()
    lim = limiter(Limits(rpm=600, itpm=60000, otpm=60000), clock, burst_seconds=1.0)
    reservation = lim.acquire(10, 10)
    clock.advance(60)
    reservation.settle(0, 0)
    assert lim.levels()[INPUT_TOKENS] == 1000


def test_release_refunds_tokens_keeps_the_request_and_is_idempotent():
    clock = FakeClock()
    lim = limiter(Limits(rpm=60, itpm=6000, otpm=6000), clock, burst_seconds=10.0)  # caps 10, 1000
    with lim.acquire(200, 100):
        pass  # leaving without settle releases
    levels = lim.levels()
    assert levels[REQUESTS] == 9 and levels[INPUT_TOKENS] == 1000 and levels[OUTPUT_TOKENS] == 1000
    reservation = lim.acquire(1, 1)
    assert reservation.release() == Settlement(1, 1)
    assert reservation.release() == Settlement(0, 0)
    assert lim.stats()["released"] == 2 and lim.in_flight == 0


def test_timeout_raises_and_leaves_nothing_behind():
    clock = FakeClock()
    lim = limiter(Limits(rpm=60, itpm=6000, otpm=6000), clock, burst_seconds=1.0)
    lim.acquire(1, 1)
    with pytest.raises(AcquireTimeout):
        lim.acquire(1, 1, timeout=0.5)
    assert lim.stats()["timeouts"] == 1 and lim.stats()["queued"] == 0
    assert lim.acquire(1, 1, timeout=0.6) is not None  # 1 s after the first


def test_headers_lower_the_level_but_never_raise_it():
    clock = FakeClock()
    lim = limiter(Limits(rpm=600, itpm=60000, otpm=60000), clock, burst_seconds=1.0)
    lim.acquire(100, 100)  # input level 900
    lim.observe_headers({"anthropic-ratelimit-input-tokens-remaining": "250"})
    assert lim.levels()[INPUT_TOKENS] == 250
    lim.observe_headers({"anthropic-ratelimit-input-tokens-remaining": "5000",
                         "anthropic-ratelimit-output-tokens-remaining": "50000"})
    levels = lim.levels()
    assert levels[INPUT_TOKENS] == 250 and levels[OUTPUT_TOKENS] == 900
    assert lim.stats()["header_corrections"] == 1


def test_headers_with_reservation_account_for_what_was_reserved_since():
    clock = FakeClock()
    lim = limiter(Limits(rpm=600, itpm=60000, otpm=60000), clock, burst_seconds=1.0)  # 1000 tokens/s
    first = lim.acquire(100, 0)
    lim.acquire(300, 0)           # sent after `first`: the server's snapshot cannot include it
    clock.advance(0.1)            # +100 refill since `first` was granted
    first.observe_headers({"anthropic-ratelimit-input-tokens-remaining": "500"})
    # 500 - 300 (reserved since) + 100 (refill since) = 300
    assert lim.levels()[INPUT_TOKENS] == pytest.approx(300)


def test_learns_limits_from_headers_after_a_single_bootstrap_request():
    clock = FakeClock()
    lim = limiter(Limits(), clock)
    assert lim.bootstrapping
    first = lim.acquire(100, 50)
    assert lim.try_acquire(1, 1) is None          # one request in flight until headers arrive
    first.observe_headers({
        "anthropic-ratelimit-requests-limit": "120", "anthropic-ratelimit-requests-remaining": "119",
        "anthropic-ratelimit-input-tokens-limit": "60000",
        "anthropic-ratelimit-input-tokens-remaining": "59000",
        "anthropic-ratelimit-output-tokens-limit": "6000",
    })
    assert not lim.bootstrapping
    assert lim.limits == Limits(rpm=120, itpm=60000, otpm=6000)
    levels = lim.levels()
    assert levels[REQUESTS] == pytest.approx(6.0)        # 2/s * 3 s burst, full
    assert levels[OUTPUT_TOKENS] == pytest.approx(300.0)
    assert lim.try_acquire(1, 1) is not None             # first is still in flight: bootstrap is over


def test_learning_applies_share_and_lowers_a_configured_limit_that_is_too_high():
    clock = FakeClock()
    lim = limiter(Limits(rpm=5000, itpm=None, otpm=8000), clock, share=0.5)
    lim.observe_headers({"anthropic-ratelimit-requests-limit": "1000",
                         "anthropic-ratelimit-input-tokens-limit": "80000",
                         "anthropic-ratelimit-output-tokens-limit": "100000"})
    assert lim.limits == Limits(rpm=500, itpm=40000, otpm=8000)


def test_configured_limits_are_kept_when_not_learning():
    clock = FakeClock()
    lim = limiter(Limits(rpm=100), clock, learn_from_headers=False)
    assert not lim.bootstrapping
    lim.observe_headers({"anthropic-ratelimit-requests-limit": "10",
                         "anthropic-ratelimit-input-tokens-limit": "10"})
    assert lim.limits == Limits(rpm=100)
    assert lim.levels()[INPUT_TOKENS] is None  # unknown and not learned: unlimited


def test_bootstrap_gives_up_when_no_limit_header_ever_comes():
    clock = FakeClock()
    lim = limiter(Limits(), clock, bootstrap_responses=2)
    lim.acquire(1, 1)
    lim.observe_headers({"content-type": "application/json"})
    assert lim.bootstrapping
    lim.observe_headers({})
    assert not lim.bootstrapping
    assert all(lim.try_acquire(1, 1) is not None for _ in range(50))  # unlimited now


def test_bootstrap_waiter_is_released_by_headers():
    lim = RateLimiter(Limits())
    first = lim.acquire(1, 1)
    got = []
    waiter = threading.Thread(target=lambda: got.append(lim.acquire(1, 1, timeout=10)))
    waiter.start()
    time.sleep(0.05)
    assert not got
    first.observe_headers({"anthropic-ratelimit-requests-limit": "6000"})
    waiter.join(5)
    assert got and not waiter.is_alive()


def test_penalize_blocks_everyone_until_retry_after():
    clock = FakeClock()
    lim = limiter(Limits(rpm=600, itpm=60000, otpm=60000), clock, burst_seconds=5.0)
    lim.penalize(2.0)
    assert lim.try_acquire(1, 1) is None
    assert lim.estimate_wait(1, 1) == pytest.approx(2.0)
    clock.advance(1.99)
    assert lim.try_acquire(1, 1) is None
    clock.advance(0.01)
    assert lim.try_acquire(1, 1) is not None
    # buckets were drained: what is available is what refilled during the pause
    assert lim.levels()[REQUESTS] == pytest.approx(2.0 * 10 - 1)
    assert lim.stats()["penalties"] == 1


def test_penalize_ignores_garbage():
    lim = limiter(Limits(rpm=60), FakeClock())
    lim.penalize(None)
    lim.penalize(float("nan"))
    lim.penalize("x")  # type: ignore[arg-type]
    assert lim.stats()["penalty_seconds"] == 0


def test_requests_per_day_bucket():
    clock = FakeClock()
    lim = limiter(Limits(rpd=3), clock, learn_from_headers=False)
    for _ in range(3):
        lim.acquire(1, 1)
    assert lim.try_acquire(1, 1) is None
    assert lim.estimate_wait(1, 1) == pytest.approx(86400 / 3)
    assert lim.levels()[REQUESTS_PER_DAY] == pytest.approx(0)


def test_token_counts_are_validated():
    lim = limiter(Limits(rpm=60), FakeClock())
    with pytest.raises(ValueError):
        lim.acquire(-1, 0)


# --------------------------------------------------------------------------
# Thread safety
# --------------------------------------------------------------------------

def test_threads_on_a_fake_clock_never_exceed_the_budget():
    clock = FakeClock()
    lim = limiter(Limits(rpm=600, itpm=30000, otpm=600000), clock, burst_seconds=1.0)  # 10 req, 500 tok
    grants: List[Tuple[float, float, float]] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        for i in range(40):
            tokens = 5 + (seed * 7 + i * 13) % 60
            reservation = lim.acquire(tokens, 10)
            with lock:
                grants.append((reservation.backend_time, 1.0, float(tokens)))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(grants) == 320
    assert_within_budget([(t, r) for t, r, _ in grants], rate=10.0, capacity=10.0)
    assert_within_budget([(t, k) for t, _, k in grants], rate=500.0, capacity=500.0)
    assert lim.in_flight == 320


def test_threads_in_real_time_never_exceed_the_budget():
    lim = RateLimiter(Limits(rpm=1200, itpm=60000, otpm=600000), burst_seconds=0.25)  # 20/s, cap 5
    grants: List[Tuple[float, float]] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + 0.8

    def worker() -> None:
        while True:
            try:
                reservation = lim.acquire(20, 5, timeout=max(0.0, stop_at - time.monotonic()))
            except AcquireTimeout:
                return
            with lock:
                grants.append((reservation.backend_time, 1.0))
            reservation.settle(20, 5)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert grants
    assert_within_budget(grants, rate=20.0, capacity=5.0)
    assert lim.in_flight == 0


def test_waiters_are_served_in_order_so_large_requests_are_not_starved():
    lim = RateLimiter(Limits(itpm=60000), learn_from_headers=False, burst_seconds=1.0)  # 1000/s, cap 1000
    lim.acquire(1000)  # empty
    granted = {}

    def take(name: str, tokens: int) -> None:
        granted[name] = lim.acquire(tokens, timeout=5).backend_time

    big = threading.Thread(target=take, args=("big", 300))
    big.start()
    deadline = time.monotonic() + 5
    while lim.stats()["queued"] < 1 and time.monotonic() < deadline:
        time.sleep(0.001)  # until big is queued
    small = [threading.Thread(target=take, args=(f"small{i}", 1)) for i in range(3)]
    for thread in small:
        thread.start()
    for thread in [big, *small]:
        thread.join(5)
    assert len(granted) == 4
    assert all(granted["big"] <= when for when in granted.values())


# --------------------------------------------------------------------------
# ConcurrencyGate (AIMD)
# --------------------------------------------------------------------------

def test_gate_halves_on_overload_and_restores_gradually():
    clock = FakeClock(0.0)
    gate = ConcurrencyGate(8, cooldown_s=10.0, increase_interval_s=2.0, decrease_guard_s=1.0, clock=clock)
    assert gate.limit == 8
    assert gate.backoff() == 4
    clock.advance(0.5)
    assert gate.backoff() == 4      # same overload event: halved once
    clock.advance(1.0)
    assert gate.backoff() == 2      # a new event halves again, cool-down restarts at t=1.5
    clock.advance(5.0)
    assert gate.limit == 2          # still cooling down
    clock.advance(6.0)              # t=12.5 > 11.5: +1, then +1 every 2 s
    assert gate.limit == 3
    clock.advance(2.0)
    assert gate.limit == 4
    clock.advance(100.0)
    assert gate.limit == 8          # never above max


def test_gate_never_goes_below_min():
    clock = FakeClock(0.0)
    gate = ConcurrencyGate(4, min_concurrency=2, decrease_guard_s=0.0, clock=clock)
    for _ in range(5):
        gate.backoff()
    assert gate.limit == 2


def test_gate_slots_follow_the_limit():
    clock = FakeClock(0.0)
    gate = ConcurrencyGate(4, cooldown_s=10.0, clock=clock)
    assert all(gate.try_acquire() for _ in range(4))
    assert not gate.try_acquire()
    gate.backoff()                  # limit 2 while 4 are in use
    for _ in range(3):
        gate.release()
    assert gate.in_use == 1
    assert gate.try_acquire()       # 2 in use
    assert not gate.try_acquire()
    with pytest.raises(RuntimeError):
        ConcurrencyGate(1).release()


def test_gate_blocking_acquire_and_timeout():
    gate = ConcurrencyGate(1)
    gate.acquire()
    with pytest.raises(GateTimeout):
        gate.acquire(timeout=0.05)
    done = []
    waiter = threading.Thread(target=lambda: (gate.acquire(timeout=5), done.append(True)))
    waiter.start()
    time.sleep(0.05)
    gate.release()
    waiter.join(5)
    assert done and gate.in_use == 1
    gate.release()
    with gate.slot(timeout=1):
        assert gate.in_use == 1
    assert gate.in_use == 0


def test_gate_threads_never_exceed_the_limit():
    gate = ConcurrencyGate(3)
    peak = [0]
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(20):
            with gate.slot():
                with lock:
                    peak[0] = max(peak[0], gate.in_use)
                time.sleep(0.001)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert peak[0] <= 3 and gate.in_use == 0


# --------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------

def test_registry_returns_one_limiter_per_key_even_under_races():
    created = []

    def factory():
        time.sleep(0.01)
        lim = RateLimiter(Limits(rpm=60))
        created.append(lim)
        return lim

    key = f"test-registry-{time.monotonic_ns()}"
    results = []
    threads = [threading.Thread(target=lambda: results.append(get_limiter(key, factory))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert len(created) == 1 and all(r is created[0] for r in results)
    other = get_limiter(key + "-other", functools.partial(RateLimiter, Limits(rpm=1)))
    assert other is not created[0]
    assert get_limiter(key, lambda: pytest.fail("factory called twice")) is created[0]


def test_create_limiter_picks_the_backend():
    assert isinstance(create_limiter(Limits(rpm=1)), RateLimiter)
    with pytest.raises(ValueError):
        create_limiter(Limits(rpm=1), redis_url="http://not-redis")


# --------------------------------------------------------------------------
# The redis-server helper itself
# --------------------------------------------------------------------------

def test_missing_redis_server_fails_under_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setattr(redis_server.shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y redis-server"):
        redis_server.require_redis_server()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        redis_server.require_redis_server()


# --------------------------------------------------------------------------
# Redis backend (a real redis-server)
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def redis_url():
    with redis_server.RedisServer() as server:
        yield server.url


_prefixes = itertools.count()


@pytest.fixture
def prefix():
    return f"test-{os.getpid()}-{next(_prefixes)}"


def test_redis_url_is_validated():
    with pytest.raises(ValueError):
        RedisRateLimiter("localhost:6379", Limits(rpm=1))


def test_redis_refill_is_continuous_and_capped(redis_url, prefix):
    lim = RedisRateLimiter(redis_url, Limits(rpm=60, itpm=60000, otpm=60000), key_prefix=prefix,
                           burst_seconds=2.0)  # 1 req/s, cap 2
    assert lim.levels()[REQUESTS] == pytest.approx(2.0)
    lim.acquire(1, 1)
    lim.acquire(1, 1)
    assert lim.try_acquire(1, 1) is None
    assert 0 < lim.estimate_wait(1, 1) <= 1.0
    time.sleep(0.3)
    level = lim.levels()[REQUESTS]
    assert level >= 0.29             # refilled continuously, not at a window boundary
    time.sleep(0.2)
    assert lim.levels()[REQUESTS] >= min(2.0, level + 0.19)
    fast = RedisRateLimiter(redis_url, Limits(rpm=6000, itpm=600000, otpm=600000), key_prefix=prefix,
                            name="fast", burst_seconds=0.1)  # 100/s, cap 10
    fast.acquire(1, 1)
    time.sleep(0.05)
    assert fast.levels()[REQUESTS] == pytest.approx(10.0)  # capped, not 9 + 5


def test_redis_acquire_is_all_or_nothing(redis_url, prefix):
    lim = RedisRateLimiter(redis_url, Limits(rpm=6000, itpm=600, otpm=60000), key_prefix=prefix,
                           burst_seconds=1.0)  # ITPM cap 10
    lim.acquire(10, 1)
    before = lim.levels()
    assert lim.try_acquire(5, 1) is None
    after = lim.levels()
    assert after[REQUESTS] >= before[REQUESTS]             # nothing taken from RPM
    assert after[OUTPUT_TOKENS] >= before[OUTPUT_TOKENS]


def test_redis_settle_release_penalize_and_headers(redis_url, prefix):
    limits = Limits(rpm=600, itpm=600, otpm=600)  # 10/s each, capacity 100 over 10 s
    lim = RedisRateLimiter(redis_url, limits, key_prefix=prefix, burst_seconds=10.0)
    started = time.monotonic()
    reservation = lim.acquire(60, 40)
    assert reservation.settle(20, 50) == Settlement(40, -10)
    levels = lim.levels()
    refill = 10.0 * (time.monotonic() - started) + 1e-6
    assert 80 <= levels[INPUT_TOKENS] <= 80 + refill
    assert 50 <= levels[OUTPUT_TOKENS] <= 50 + refill
    started = time.monotonic()
    lim.observe_headers({"anthropic-ratelimit-input-tokens-remaining": "7"})
    level = lim.levels()[INPUT_TOKENS]
    assert 7 <= level <= 7 + 10.0 * (time.monotonic() - started) + 1e-6
    lim.observe_headers({"anthropic-ratelimit-input-tokens-remaining": "90"})
    assert lim.levels()[INPUT_TOKENS] < 90                  # never raised
    other_worker = RedisRateLimiter(redis_url, limits, key_prefix=prefix, burst_seconds=10.0)
    started = time.monotonic()
    lim.penalize(0.5)
    assert other_worker.try_acquire(1, 1) is None           # the pause is shared
    assert 0 < other_worker.estimate_wait(1, 1) <= 0.5
    other_worker.acquire(1, 1, timeout=5)
    assert time.monotonic() - started >= 0.49


def test_redis_learned_limits_are_shared_by_every_worker(redis_url, prefix):
    first = RedisRateLimiter(redis_url, Limits(), key_prefix=prefix)
    second = RedisRateLimiter(redis_url, Limits(), key_prefix=prefix)
    reservation = first.acquire(10, 10)
    first.observe_headers({"anthropic-ratelimit-requests-limit": "600",
                           "anthropic-ratelimit-input-tokens-limit": "60000",
                           "anthropic-ratelimit-output-tokens-limit": "6000"})
    reservation.settle(10, 10)
    assert second.bootstrapping
    held = second.acquire(1, 1, timeout=5)
    assert second.try_acquire(1, 1) is not None             # bootstrap ended via Redis
    assert not second.bootstrapping
    levels = second.levels()
    assert levels[REQUESTS] is not None and levels[REQUESTS] <= 30  # 10/s * 3 s burst
    assert second.limits == Limits(rpm=600, itpm=60000, otpm=6000)
    held.release()


_CHILD = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, sys.argv[1])
    from transforms.api.ratelimit import Limits, RedisRateLimiter, AcquireTimeout
    url, prefix, start_at, duration = sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
    lim = RedisRateLimiter(url, Limits(rpm=600, itpm=6000, otpm=600000), key_prefix=prefix,
                           burst_seconds=1.0, poll_s=0.02)
    time.sleep(max(0.0, start_at - time.time()))
    end = time.monotonic() + duration
    grants, i = [], 0
    while True:
        tokens = 5 + (i * 7) % 20
        i += 1
        try:
            r = lim.acquire(tokens, 3, timeout=max(0.0, end - time.monotonic()))
        except AcquireTimeout:
            break
        grants.append([r.backend_time, tokens])
    print(json.dumps(grants))
""")


def test_redis_two_processes_share_one_budget(redis_url, prefix):
    start_at = time.time() + 1.0  # both start together, after their imports
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, str(ROOT), redis_url, prefix, str(start_at), "2.0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        outputs.append(json.loads(out))
    assert all(outputs), "each process got at least one grant"
    grants = [(t, float(tokens)) for output in outputs for t, tokens in output]
    # 10 requests/s with a capacity of 10; 100 input tokens/s with a capacity of 100
    assert_within_budget([(t, 1.0) for t, _ in grants], rate=10.0, capacity=10.0)
    assert_within_budget(grants, rate=100.0, capacity=100.0)
    span = max(t for t, _ in grants) - min(t for t, _ in grants)
    assert sum(tokens for _, tokens in grants) <= 100 + 100 * span + 1e-6
