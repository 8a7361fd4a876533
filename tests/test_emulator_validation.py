"""The emulator refuses what the API refuses, as the API does (issue #17).

Every refusal is driven through the real `anthropic` SDK: the SDK must raise
the class the API's status maps to (BadRequestError for 400, NotFoundError
for 404) with the API's error body and a request id. Valid requests still
succeed, read with `_strict_response_validation=True` so the emulator's
answers are checked against the SDK's own types.
"""
from __future__ import annotations

import anthropic
import pytest
from anthropic import Omit

import emulator
from emulator.models import MODELS
from tests.conftest import wait_until_ended

MODEL = "claude-haiku-4-5"
USER = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def srv():
    with emulator.running(seed=3) as e:
        yield e


_DEFAULTS = {k: v for k, v in emulator.EmulatorConfig().to_dict().items() if k not in ("host", "port")}


@pytest.fixture(autouse=True)
def _fresh(srv):
    srv.configure(**{**_DEFAULTS, "seed": 3})
    srv.reset()
    yield


def make_client(srv, **kw):
    return anthropic.Anthropic(api_key="test-key", base_url=srv.base_url, max_retries=0, timeout=20, **kw)


@pytest.fixture
def client(srv):
    return make_client(srv)


@pytest.fixture
def strict(srv):
    return make_client(srv, _strict_response_validation=True)


def refused(exc_class, call, etype="invalid_request_error"):
    """Run `call`, expect the SDK to raise `exc_class` with the API's error shape; its message."""
    with pytest.raises(exc_class) as e:
        call()
    err = e.value
    body = err.body
    assert body["type"] == "error" and body["error"]["type"] == etype, body
    rid = err.response.headers["request-id"]
    assert rid.startswith("req_") and body["request_id"] == rid
    assert "anthropic-ratelimit-requests-limit" in err.response.headers  # on every answer
    return body["error"]["message"]


# ----------------------------------------------------------------------------- Messages

def test_valid_message_passes_strict_validation(strict):
    raw = strict.messages.with_raw_response.create(model=MODEL, max_tokens=64, messages=USER,
                                                   metadata={"user_id": "u1"}, service_tier="auto",
                                                   stop_sequences=["END"])
    m = raw.parse()
    assert m.type == "message" and m.model == MODEL and m.usage.input_tokens > 0
    assert raw.headers["request-id"].startswith("req_")


def test_unknown_model_is_404_not_found(client):
    msg = refused(anthropic.NotFoundError,
                  lambda: client.messages.create(model="no-such-model", max_tokens=16, messages=USER),
                  "not_found_error")
    assert msg == "model: no-such-model"


def test_every_model_of_the_table_is_answered(client):
    for model in MODELS:
        assert client.messages.create(model=model, max_tokens=8, messages=USER).model == model


def test_model_table_can_be_extended_by_config(client, srv):
    srv.configure(models={"claude-test-new": {"max_output_tokens": 100}})
    assert client.messages.create(model="claude-test-new", max_tokens=100, messages=USER).type == "message"
    msg = refused(anthropic.BadRequestError,
                  lambda: client.messages.create(model="claude-test-new", max_tokens=101, messages=USER))
    assert msg.startswith("max_tokens: 101 > 100")


@pytest.mark.parametrize("field, value", [
    ("response_format", {"type": "json_object"}),
    ("temperature", 0.5),  # no such field in the API notes nor in SDK 2.14
    ("temperature", 2.0),
    ("top_p", 0.9),
])
def test_unknown_top_level_field_is_refused(client, field, value):
    msg = refused(anthropic.BadRequestError,
                  lambda: client.messages.create(model=MODEL, max_tokens=16, messages=USER,
                                                 extra_body={field: value}))
    assert msg == f"{field}: Extra inputs are not permitted"


def test_missing_anthropic_version_is_refused(srv):
    bare = make_client(srv, default_headers={"anthropic-version": Omit()})
    msg = refused(anthropic.BadRequestError,
                  lambda: bare.messages.create(model=MODEL, max_tokens=16, messages=USER))
    assert msg == "anthropic-version: header is required"
    refused(anthropic.BadRequestError,
            lambda: bare.messages.count_tokens(model=MODEL, messages=USER))
    refused(anthropic.BadRequestError, lambda: bare.messages.batches.list())


@pytest.mark.parametrize("max_tokens, expect", [
    (0, "max_tokens: Input should be greater than or equal to 1"),
    (-5, "max_tokens: Input should be greater than or equal to 1"),
    (64_001, "max_tokens: 64001 > 64000, which is the maximum allowed number of output tokens for "
             "claude-haiku-4-5"),
])
def test_max_tokens_out_of_range_is_refused(client, max_tokens, expect):
    msg = refused(anthropic.BadRequestError,
                  lambda: client.messages.create(model=MODEL, max_tokens=max_tokens, messages=USER))
    assert msg == expect


def test_max_tokens_at_the_model_maximum_is_accepted(client):
    m = client.messages.create(model="claude-3-haiku-20240307", max_tokens=4096, messages=USER)
    assert m.type == "message"
    refused(anthropic.BadRequestError,
            lambda: client.messages.create(model="claude-3-haiku-20240307", max_tokens=4097, messages=USER))


@pytest.mark.parametrize("messages, expect", [
    ([], "messages: List should have at least 1 item after validation"),
    ([{"role": "user", "content": ""}],
     "messages.0: all messages must have non-empty content except for the optional final assistant message"),
    ([{"role": "user", "content": []}],
     "messages.0: all messages must have non-empty content except for the optional final assistant message"),
    ([{"role": "user", "content": [{"type": "text", "text": ""}]}],
     "messages.0: text content blocks must be non-empty"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}, {"role": "user", "content": "x"}],
     "messages.1: all messages must have non-empty content except for the optional final assistant message"),
])
def test_empty_messages_or_content_is_refused(client, messages, expect):
    msg = refused(anthropic.BadRequestError,
                  lambda: client.messages.create(model=MODEL, max_tokens=16, messages=messages))
    assert msg == expect


def test_final_assistant_message_may_be_empty(client):
    m = client.messages.create(model=MODEL, max_tokens=16,
                               messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}])
    assert m.type == "message"


def test_prompt_longer_than_the_context_window_is_refused(client, srv):
    srv.configure(models={MODEL: {"context_window": 50}})
    msg = refused(anthropic.BadRequestError,
                  lambda: client.messages.create(model=MODEL, max_tokens=16,
                                                 messages=[{"role": "user", "content": "word " * 200}]))
    assert msg.startswith("prompt is too long: ") and msg.endswith(" tokens > 50 maximum")
    assert srv.stats()["tokens"]["standard"]["input_tokens"] == 0  # refused, not billed


# ----------------------------------------------------------------------------- count_tokens

def test_count_tokens_valid_passes_strict_validation(strict):
    counted = strict.messages.count_tokens(model=MODEL, messages=USER, system="Be brief.")
    assert counted.input_tokens > 0


def test_count_tokens_validates_what_applies_to_it(client):
    refused(anthropic.NotFoundError, lambda: client.messages.count_tokens(model="no-such-model", messages=USER),
            "not_found_error")
    msg = refused(anthropic.BadRequestError,
                  lambda: client.messages.count_tokens(model=MODEL, messages=USER, extra_body={"max_tokens": 5}))
    assert msg == "max_tokens: Extra inputs are not permitted"  # count_tokens takes no max_tokens
    msg = refused(anthropic.BadRequestError,
                  lambda: client.messages.count_tokens(model=MODEL, messages=USER,
                                                       extra_body={"response_format": {}}))
    assert msg == "response_format: Extra inputs are not permitted"
    refused(anthropic.BadRequestError, lambda: client.messages.count_tokens(model=MODEL, messages=[]))
    refused(anthropic.BadRequestError,
            lambda: client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": ""}]))


# ----------------------------------------------------------------------------- batches


def test_invalid_batch_requests_end_errored_not_refused(strict):
    """The API notes: per-request params are validated asynchronously; a bad
    request does not fail the create, it comes back as an errored result."""
    good = {"model": MODEL, "max_tokens": 16, "messages": USER}
    bad = {
        "extra": {**good, "response_format": {"type": "json_object"}},
        "unknown-model": {**good, "model": "no-such-model"},
        "zero-max": {**good, "max_tokens": 0},
        "over-max": {**good, "max_tokens": 64_001},
        "no-messages": {**good, "messages": []},
        "empty-content": {**good, "messages": [{"role": "user", "content": ""}]},
        "temperature": {**good, "temperature": 3},
    }
    requests = [{"custom_id": "good", "params": good}] + [{"custom_id": k, "params": v} for k, v in bad.items()]
    created = strict.messages.batches.create(requests=requests)
    assert created.processing_status == "in_progress"
    ended = wait_until_ended(strict.messages.batches.retrieve, created.id)
    assert ended.request_counts.succeeded == 1 and ended.request_counts.errored == len(bad)
    results = {r.custom_id: r.result for r in strict.messages.batches.results(created.id)}
    assert results["good"].type == "succeeded" and results["good"].message.usage.service_tier == "batch"
    for cid in bad:
        r = results[cid]
        assert r.type == "errored", cid
        want = "not_found_error" if cid == "unknown-model" else "invalid_request_error"
        assert r.error.error.type == want, (cid, r.error)
    assert results["unknown-model"].error.error.message == "model: no-such-model"
    assert results["extra"].error.error.message == "response_format: Extra inputs are not permitted"
    assert results["temperature"].error.error.message == "temperature: Extra inputs are not permitted"


# ----------------------------------------------------------------------------- rate-limit headers

def test_rate_limit_headers_on_every_route(client, srv):
    answers = [
        client.messages.with_raw_response.create(model=MODEL, max_tokens=8, messages=USER),
        client.messages.with_raw_response.count_tokens(model=MODEL, messages=USER),
        client.messages.batches.with_raw_response.list(),
    ]
    for raw in answers:
        for kind in ("requests", "input-tokens", "output-tokens", "tokens"):
            for part in ("limit", "remaining", "reset"):
                assert f"anthropic-ratelimit-{kind}-{part}" in raw.headers, (kind, part)
    assert answers[0].headers["anthropic-ratelimit-requests-limit"] == "4000"


def test_default_limits_are_reported_not_enforced(client, srv):
    srv.configure(default_rpm=60)  # 1 request a second, reported only
    for _ in range(5):
        h = client.messages.with_raw_response.create(model=MODEL, max_tokens=8, messages=USER).headers
    assert h["anthropic-ratelimit-requests-limit"] == "60"
    assert int(h["anthropic-ratelimit-requests-remaining"]) in (55, 56)
    assert srv.stats()["rate_limited"] == 0
