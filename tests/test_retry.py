"""transforms.api.retry: classify() on real SDK exceptions, and the retry loop.

The exceptions come from the real ``anthropic`` client (max_retries=0) talking
to a tiny local HTTP server that answers each case's status, headers and
error body, so the table checks what the SDK really raises. A few are built
directly from ``httpx2.Response`` objects for property tests.
"""
from __future__ import annotations

import email.utils
import http.server
import json
import socket
import threading
import time
from typing import Dict, List, Optional, Tuple

import sys
from pathlib import Path

import anthropic
import httpx2
import pytest
from hypothesis import given, settings, strategies as st

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from transforms.api.ratelimit import ConcurrencyGate, Limits, RateLimiter
from transforms.api.retry import (Decision, Kind, RetryEvent, RetryStats, call_with_retries, classify,
                              make_retrying, parse_retry_after)

MODEL = "claude-test-model"


# --------------------------------------------------------------------------
# A tiny scripted HTTP server
# --------------------------------------------------------------------------

def _error_body(error_type: str, message: str = "scripted error", error_code: Optional[str] = None) -> dict:
    error: dict = {"type": error_type, "message": message}
    if error_code:
        error["details"] = {"error_code": error_code}
    return {"type": "error", "error": error, "request_id": "req_test"}


_OK_BODY = {
    "id": "msg_test", "type": "message", "role": "assistant", "model": MODEL,
    "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn", "stop_sequence": None,
    "usage": {"input_tokens": 12, "output_tokens": 3},
}
_OK_HEADERS = {
    "anthropic-ratelimit-requests-limit": "600", "anthropic-ratelimit-requests-remaining": "590",
    "anthropic-ratelimit-input-tokens-limit": "60000", "anthropic-ratelimit-input-tokens-remaining": "59000",
    "anthropic-ratelimit-output-tokens-limit": "12000", "anthropic-ratelimit-output-tokens-remaining": "11900",
}

# case name -> list of responses served in turn (the last one repeats);
# a response is (status, headers, body) or "sleep" / "drop".
Response = Tuple[int, Dict[str, str], dict]
_FUTURE_DATE = email.utils.formatdate(time.time() + 3600, usegmt=True)
CASES: Dict[str, List] = {
    "ok": [(200, _OK_HEADERS, _OK_BODY)],
    "429_retry_after": [(429, {"retry-after": "2"}, _error_body("rate_limit_error"))],
    "429_retry_after_ms": [(429, {"retry-after-ms": "1500", "retry-after": "9"},
                            _error_body("rate_limit_error"))],
    "429_ms_garbage": [(429, {"retry-after-ms": "soon", "retry-after": "3"}, _error_body("rate_limit_error"))],
    "429_garbage": [(429, {"retry-after": "soon"}, _error_body("rate_limit_error"))],
    "429_date": [(429, {"retry-after": _FUTURE_DATE}, _error_body("rate_limit_error"))],
    "429_no_retry_after": [(429, {}, _error_body("rate_limit_error"))],
    "429_spend_code": [(429, {"retry-after": "60"},
                        _error_body("rate_limit_error", error_code="enforced_spend_limit_reached"))],
    "429_ramp_code": [(429, {}, _error_body("rate_limit_error", error_code="ramp_limit_exceeded"))],
    "529": [(529, {}, _error_body("overloaded_error"))],
    "500": [(500, {}, _error_body("api_error"))],
    "502": [(502, {}, _error_body("api_error"))],
    "503": [(503, {}, _error_body("api_error"))],
    "504": [(504, {}, _error_body("timeout_error"))],
    "500_no_retry": [(500, {"x-should-retry": "false"}, _error_body("api_error"))],
    "400": [(400, {}, _error_body("invalid_request_error"))],
    "400_should_retry": [(400, {"x-should-retry": "true"}, _error_body("invalid_request_error"))],
    "400_too_long": [(400, {}, _error_body("invalid_request_error",
                                           "prompt is too long: 210000 tokens > 200000 maximum"))],
    "401": [(401, {}, _error_body("authentication_error"))],
    "402": [(402, {}, _error_body("billing_error"))],
    "403": [(403, {}, _error_body("permission_error"))],
    "404": [(404, {}, _error_body("not_found_error"))],
    "408": [(408, {}, _error_body("timeout_error"))],
    "409": [(409, {}, _error_body("conflict_error"))],
    "413": [(413, {}, _error_body("request_too_large"))],
    "422": [(422, {}, _error_body("invalid_request_error"))],
    "slow": ["sleep"],
    "drop": ["drop"],
    # sequences for the retry loop
    "429_then_ok": [(429, {"retry-after-ms": "20", **_OK_HEADERS,
                           "anthropic-ratelimit-requests-remaining": "0"}, _error_body("rate_limit_error")),
                    (200, _OK_HEADERS, _OK_BODY)],
    "529_twice_then_ok": [(529, {}, _error_body("overloaded_error")),
                          (529, {}, _error_body("overloaded_error")),
                          (200, _OK_HEADERS, _OK_BODY)],
}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    counters: Dict[str, int] = {}
    lock = threading.Lock()

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        parts = self.path.split("/")
        case = parts[2] if len(parts) > 2 and parts[1] == "c" else "ok"
        script = CASES[case]
        with self.lock:
            index = self.counters.get(self.path, 0)
            self.counters[self.path] = index + 1
        response = script[min(index, len(script) - 1)]
        if response == "sleep":
            time.sleep(1.0)
            self.close_connection = True
            return None
        if response == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return None
        status, headers, body = response
        return self._send(status, headers, body)

    def _send(self, status: int, headers: Dict[str, str], body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("request-id", "req_test")
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out first
            pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


_run_counter = iter(range(10**9))


def _client(base_url: str, case: str, timeout: float = 5.0) -> anthropic.Anthropic:
    # a fresh path per client: each scripted sequence starts at its beginning
    return anthropic.Anthropic(api_key="test-key", base_url=f"{base_url}/c/{case}/{next(_run_counter)}",
                               max_retries=0, timeout=timeout)


def _create(client: anthropic.Anthropic):
    return client.messages.with_raw_response.create(
        model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "hello"}])


def sdk_error(base_url: str, case: str, timeout: float = 5.0) -> BaseException:
    """The exception the real SDK raises for a scripted case."""
    try:
        _create(_client(base_url, case, timeout))
    except Exception as exc:  # noqa: BLE001 - the point is to capture it
        return exc
    raise AssertionError(f"case {case} did not fail")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------
# classify(): the table
# --------------------------------------------------------------------------

# case, SDK class raised, kind, retryable, retry_after_s, halt
CLASSIFY_TABLE = [
    ("429_retry_after", anthropic.RateLimitError, Kind.RATE_LIMITED, True, 2.0, False),
    ("429_retry_after_ms", anthropic.RateLimitError, Kind.RATE_LIMITED, True, 1.5, False),
    ("429_ms_garbage", anthropic.RateLimitError, Kind.RATE_LIMITED, True, 3.0, False),
    ("429_garbage", anthropic.RateLimitError, Kind.RATE_LIMITED, True, None, False),
    ("429_no_retry_after", anthropic.RateLimitError, Kind.SPEND_LIMIT, False, None, True),
    ("429_spend_code", anthropic.RateLimitError, Kind.SPEND_LIMIT, False, 60.0, True),
    ("429_ramp_code", anthropic.RateLimitError, Kind.RATE_LIMITED, True, None, False),
    ("529", anthropic.OverloadedError, Kind.OVERLOADED, True, None, False),
    ("500", anthropic.InternalServerError, Kind.SERVER, True, None, False),
    ("502", anthropic.InternalServerError, Kind.SERVER, True, None, False),
    ("503", anthropic.ServiceUnavailableError, Kind.SERVER, True, None, False),
    ("504", anthropic.GatewayTimeoutError, Kind.SERVER, True, None, False),
    ("500_no_retry", anthropic.InternalServerError, Kind.SERVER, False, None, False),
    ("400", anthropic.BadRequestError, Kind.FATAL, False, None, False),
    ("400_should_retry", anthropic.BadRequestError, Kind.FATAL, True, None, False),
    ("400_too_long", anthropic.BadRequestError, Kind.TOO_LARGE, False, None, False),
    ("401", anthropic.AuthenticationError, Kind.FATAL, False, None, True),
    ("402", anthropic.PaymentRequiredError, Kind.FATAL, False, None, True),
    ("403", anthropic.PermissionDeniedError, Kind.FATAL, False, None, False),
    ("404", anthropic.NotFoundError, Kind.FATAL, False, None, False),
    ("408", anthropic.RequestTimeoutError, Kind.TIMEOUT, True, None, False),
    ("409", anthropic.ConflictError, Kind.CONFLICT, True, None, False),
    ("413", anthropic.ContentTooLargeError, Kind.TOO_LARGE, False, None, False),
    ("422", anthropic.UnprocessableEntityError, Kind.FATAL, False, None, False),
]


@pytest.mark.parametrize("case,sdk_class,kind,retryable,retry_after,halt", CLASSIFY_TABLE,
                         ids=[row[0] for row in CLASSIFY_TABLE])
def test_classify_real_sdk_errors(server, case, sdk_class, kind, retryable, retry_after, halt):
    exc = sdk_error(server, case)
    assert type(exc) is sdk_class or isinstance(exc, sdk_class)
    decision = classify(exc)
    assert decision.kind is kind
    assert decision.retryable is retryable
    assert decision.halt is halt
    assert decision.status_code == exc.status_code
    assert decision.request_id == "req_test"
    if retry_after is None:
        assert decision.retry_after_s is None
    else:
        assert decision.retry_after_s == pytest.approx(retry_after)
    # the reason is safe for a dead-letter row: no message text
    assert "scripted error" not in decision.reason
    assert str(exc.status_code) in decision.reason


def test_classify_retry_after_http_date(server):
    decision = classify(sdk_error(server, "429_date"))
    assert decision.kind is Kind.RATE_LIMITED
    # the date was fixed at import (now + 1 h); the suite may reach this test minutes later
    assert 1800 < decision.retry_after_s <= 3600


def test_classify_error_type_and_code_come_from_the_body(server):
    decision = classify(sdk_error(server, "429_spend_code"))
    assert decision.error_type == "rate_limit_error"
    assert decision.error_code == "enforced_spend_limit_reached"


def test_classify_client_timeout(server):
    exc = sdk_error(server, "slow", timeout=0.2)
    assert isinstance(exc, anthropic.APITimeoutError)
    decision = classify(exc)
    assert (decision.kind, decision.retryable, decision.retry_after_s) == (Kind.TIMEOUT, True, None)


def test_classify_connection_refused():
    client = anthropic.Anthropic(api_key="k", base_url=f"http://127.0.0.1:{_closed_port()}", max_retries=0,
                                 timeout=2.0)
    try:
        _create(client)
    except anthropic.APIConnectionError as exc:
        assert not isinstance(exc, anthropic.APITimeoutError)
        decision = classify(exc)
    assert (decision.kind, decision.retryable) == (Kind.CONNECTION, True)


def test_classify_dropped_connection(server):
    exc = sdk_error(server, "drop")
    assert isinstance(exc, anthropic.APIConnectionError)
    decision = classify(exc)
    assert decision.kind in (Kind.CONNECTION, Kind.TIMEOUT) and decision.retryable


@pytest.mark.parametrize("exc", [ValueError("bug"), KeyError("x"), RuntimeError("y")])
def test_classify_non_api_errors_are_fatal(exc):
    decision = classify(exc)
    assert (decision.kind, decision.retryable) == (Kind.FATAL, False)


def _built(status: int, headers: Dict[str, str], cls=anthropic.APIStatusError):
    request = httpx2.Request("POST", "http://127.0.0.1/v1/messages")
    response = httpx2.Response(status, headers=headers, request=request)
    return cls("scripted", response=response, body=None)


def test_classify_generic_status_errors_built_directly():
    assert classify(_built(529, {}, anthropic.InternalServerError)).kind is Kind.OVERLOADED
    assert classify(_built(599, {}, anthropic.InternalServerError)).kind is Kind.SERVER
    assert classify(_built(418, {})).kind is Kind.FATAL
    assert classify(_built(499, {})).kind is Kind.TIMEOUT


@settings(max_examples=150, deadline=None)
@given(status=st.sampled_from([400, 408, 409, 413, 429, 500, 503, 529]),
       headers=st.dictionaries(st.sampled_from(["retry-after", "retry-after-ms", "x-should-retry",
                                                "Retry-After"]),
                               st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                                       max_size=12), max_size=3))
def test_classify_never_raises_and_retry_after_is_sane(status, headers):
    decision = classify(_built(status, headers))
    assert isinstance(decision, Decision)
    if decision.retry_after_s is not None:
        assert decision.retry_after_s >= 0 and decision.retry_after_s == decision.retry_after_s
    if decision.kind in (Kind.TOO_LARGE, Kind.SPEND_LIMIT):
        assert not decision.retryable


# --------------------------------------------------------------------------
# parse_retry_after
# --------------------------------------------------------------------------

@pytest.mark.parametrize("headers,expected", [
    (None, None),
    ({}, None),
    ({"retry-after": "7"}, 7.0),
    ({"Retry-After": "7"}, 7.0),
    ({"retry-after": "0.25"}, 0.25),
    ({"retry-after-ms": "250"}, 0.25),
    ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
    ({"retry-after-ms": "x", "retry-after": "9"}, 9.0),
    ({"retry-after": "-3"}, None),
    ({"retry-after": "nan"}, None),
    ({"retry-after": "inf"}, None),
    ({"retry-after": ""}, None),
    ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # in the past
])
def test_parse_retry_after_table(headers, expected):
    assert parse_retry_after(headers) == expected


def test_parse_retry_after_http_date_relative_to_now():
    when = email.utils.formatdate(1_000_060, usegmt=True)
    assert parse_retry_after({"retry-after": when}, now=1_000_000) == pytest.approx(60.0)


@given(st.dictionaries(st.sampled_from(["retry-after", "retry-after-ms"]), st.text(max_size=40)))
def test_parse_retry_after_never_raises(headers):
    value = parse_retry_after(headers)
    assert value is None or (value >= 0 and value != float("inf"))


# --------------------------------------------------------------------------
# The retry loop (fake time)
# --------------------------------------------------------------------------

class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: List[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _failing(excs: List[BaseException], result: str = "done"):
    calls = {"n": 0}

    def fn():
        calls["n"] += 1
        if excs:
            raise excs.pop(0)
        return result
    return fn, calls


def test_retries_until_success_and_counts_attempts():
    fake = FakeTime()
    fn, calls = _failing([_built(500, {}, anthropic.InternalServerError),
                          _built(503, {}, anthropic.InternalServerError)])
    stats = RetryStats()
    events: List[RetryEvent] = []
    assert call_with_retries(fn, sleep=fake.sleep, clock=fake.clock, stats=stats,
                             on_retry=events.append) == "done"
    assert calls["n"] == 3 and stats.attempts == 3 and stats.retries == 2
    assert [e.attempt for e in events] == [1, 2]
    assert all(e.decision.kind is Kind.SERVER for e in events)
    assert stats.by_kind[Kind.SERVER] == 2
    assert stats.slept_s == pytest.approx(sum(fake.sleeps))


def test_non_retryable_raises_at_once():
    fake = FakeTime()
    fn, calls = _failing([_built(400, {}, anthropic.BadRequestError)])
    stats = RetryStats()
    with pytest.raises(anthropic.BadRequestError):
        call_with_retries(fn, sleep=fake.sleep, clock=fake.clock, stats=stats)
    assert calls["n"] == 1 and stats.attempts == 1 and fake.sleeps == []
    assert stats.last_decision.kind is Kind.FATAL


def test_spend_limit_is_not_retried():
    fake = FakeTime()
    fn, calls = _failing([_built(429, {}, anthropic.RateLimitError)])
    with pytest.raises(anthropic.RateLimitError):
        call_with_retries(fn, sleep=fake.sleep, clock=fake.clock)
    assert calls["n"] == 1


def test_attempt_cap_raises_the_last_exception():
    fake = FakeTime()
    excs = [_built(500, {}, anthropic.InternalServerError) for _ in range(10)]
    last = excs[3]
    fn, calls = _failing(excs)
    with pytest.raises(anthropic.InternalServerError) as info:
        call_with_retries(fn, max_attempts=4, sleep=fake.sleep, clock=fake.clock)
    assert info.value is last
    assert calls["n"] == 4 and len(fake.sleeps) == 3


def test_full_jitter_stays_under_the_exponential_ceiling():
    fake = FakeTime()
    fn, _ = _failing([_built(529, {}, anthropic.InternalServerError) for _ in range(40)])
    with pytest.raises(anthropic.InternalServerError):
        call_with_retries(fn, max_attempts=8, initial_backoff_s=0.5, max_backoff_s=4.0, max_total_s=1e9,
                          sleep=fake.sleep, clock=fake.clock)
    assert len(fake.sleeps) == 7
    for n, slept in enumerate(fake.sleeps, start=1):
        assert 0 <= slept <= min(4.0, 0.5 * 2 ** (n - 1)) + 1e-9


def test_waits_at_least_retry_after():
    fake = FakeTime()
    fn, _ = _failing([_built(429, {"retry-after": "7"}, anthropic.RateLimitError)])
    call_with_retries(fn, initial_backoff_s=0.01, sleep=fake.sleep, clock=fake.clock)
    assert fake.sleeps and fake.sleeps[0] >= 7.0


def test_total_time_cap_never_sleeps_past_it():
    fake = FakeTime()
    fn, calls = _failing([_built(429, {"retry-after": "30"}, anthropic.RateLimitError)])
    with pytest.raises(anthropic.RateLimitError):
        call_with_retries(fn, max_total_s=10, sleep=fake.sleep, clock=fake.clock)
    assert calls["n"] == 1 and fake.sleeps == []


def test_total_time_cap_counts_time_spent_in_calls():
    fake = FakeTime()

    def slow_failure():
        fake.now += 4.0
        raise _built(500, {}, anthropic.InternalServerError)

    with pytest.raises(anthropic.InternalServerError):
        call_with_retries(slow_failure, max_attempts=100, max_total_s=20, initial_backoff_s=0.001,
                          max_backoff_s=0.001, sleep=fake.sleep, clock=fake.clock)
    assert fake.now - 100.0 <= 20 + 4.0 + 1e-6  # the last attempt may start just before the cap


def test_429_penalizes_the_shared_limiter_and_529_lowers_the_gate():
    fake = FakeTime()
    limiter = RateLimiter(Limits(rpm=600, itpm=100000, otpm=10000), clock=fake.clock, sleep=fake.sleep)
    gate = ConcurrencyGate(8, clock=fake.clock)
    fn, _ = _failing([_built(429, {"retry-after": "2", "anthropic-ratelimit-requests-remaining": "0"},
                             anthropic.RateLimitError),
                      _built(529, {}, anthropic.InternalServerError)])
    assert call_with_retries(fn, limiter=limiter, gate=gate, sleep=fake.sleep, clock=fake.clock) == "done"
    stats = limiter.stats()
    assert stats["penalties"] == 1 and stats["penalty_seconds"] == 2.0
    assert stats["header_observations"] == 2  # both error responses' headers were read
    assert stats["header_corrections"] >= 1     # requests-remaining: 0 lowered the bucket
    assert gate.limit == 4 and gate.in_use == 0


def test_make_retrying_is_a_tenacity_retrying():
    fake = FakeTime()
    retrying = make_retrying(sleep=fake.sleep, clock=fake.clock, max_attempts=2)
    fn, calls = _failing([_built(409, {}, anthropic.ConflictError)])
    assert retrying(fn) == "done" and calls["n"] == 2


# --------------------------------------------------------------------------
# End to end: real SDK, real HTTP, limiter fed by headers
# --------------------------------------------------------------------------

def test_end_to_end_429_then_success_feeds_the_limiter(server):
    fake = FakeTime()
    limiter = RateLimiter(Limits(), clock=fake.clock, sleep=fake.sleep)  # learns everything
    client = _client(server, "429_then_ok")
    usage = {}

    def call():
        with limiter.acquire(20, 5) as reservation:
            raw = _create(client)
            reservation.observe_headers(raw.headers)
            message = raw.parse()
            reservation.settle(message.usage.input_tokens, message.usage.output_tokens)
            usage["input"] = message.usage.input_tokens
            return message

    stats = RetryStats()
    message = call_with_retries(call, limiter=limiter, sleep=fake.sleep, clock=fake.clock, stats=stats)
    assert message.content[0].text == "ok" and usage["input"] == 12
    assert stats.attempts == 2 and fake.sleeps[0] >= 0.02
    assert limiter.limits == Limits(rpm=600, itpm=60000, otpm=12000)
    limiter_stats = limiter.stats()
    assert limiter_stats["penalties"] == 1
    assert limiter_stats["released"] == 1 and limiter_stats["settled"] == 1
    assert limiter.in_flight == 0 and not limiter.bootstrapping


def test_end_to_end_overload_backs_off_the_gate(server):
    fake = FakeTime()
    gate = ConcurrencyGate(6, clock=fake.clock, decrease_guard_s=0.0)
    client = _client(server, "529_twice_then_ok")
    result = call_with_retries(lambda: _create(client).parse(), gate=gate, sleep=fake.sleep, clock=fake.clock)
    assert result.id == "msg_test"
    assert gate.limit == 1  # 6 -> 3 -> 1 (guard disabled: each 529 halves)
