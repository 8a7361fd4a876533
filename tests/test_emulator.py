"""The Anthropic-compatible emulator, driven through the real `anthropic` SDK.

Every endpoint, error and fault the pipeline relies on is exercised here over
HTTP, so a regression in the test double shows up as a failure here rather
than as a confusing pipeline failure elsewhere.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import anthropic
import jsonschema
import pytest

import emulator
from tests.conftest import wait_until_ended
from emulator import EmulatorConfig, expected_output
from transforms.prompts import answers
from transforms.prompts import packing
from transforms.api.tokens import estimate_request_tokens, estimate_tokens, system_tokens

MODEL = "claude-haiku-4-5"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TASK_SCHEMA = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "summary": {"type": "string", "minLength": 5, "maxLength": 60},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
        "urgent": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "minItems": 1, "maxItems": 3},
        "note": {"type": ["string", "null"]},
        "when": {"type": "string", "format": "date"},
    },
    "required": ["sentiment", "summary", "score", "stars", "urgent", "tags"],
    "additionalProperties": False,
}


def item_schema(task):
    return {**task, "properties": {"id": {"type": "string"}, **task["properties"]},
            "required": ["id"] + list(task.get("required", []))}


def pack_schema(task):
    return {"type": "object", "properties": {"results": {"type": "array", "items": item_schema(task)}},
            "required": ["results"], "additionalProperties": False}


FREE_TEXT_PACK_SCHEMA = pack_schema({"type": "object", "properties": {"output": {"type": "string"}},
                                     "required": ["output"], "additionalProperties": False})


def esc(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def item(item_id, content):
    return f'<item id="{esc(item_id).replace(chr(34), "&quot;")}">{esc(content)}</item>'


def pack(pairs):
    return "<items_to_process>\n" + "\n".join(item(i, c) for i, c in pairs) + "\n</items_to_process>"


def params(text, schema=None, max_tokens=1000, system=None, model=MODEL):
    p = {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": text}]}
    if schema is not None:
        p["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    if system is not None:
        p["system"] = system
    return p


RECORDS = [
    ("r-1", "The parcel arrived two weeks late & the box was crushed."),
    ("r-2", "Great service, the agent solved my <billing> problem quickly."),
    ("r-3", 'Neutral remark: "ok" I guess, nothing special about the order.'),
    ("r-4", "Refund still missing after three emails to support."),
]


@pytest.fixture(scope="module")
def srv():
    with emulator.running(seed=11) as e:
        yield e


_DEFAULTS = {k: v for k, v in EmulatorConfig().to_dict().items() if k not in ("host", "port")}


@pytest.fixture(autouse=True)
def clean(srv):
    srv.configure(**{**_DEFAULTS, "seed": 11})
    srv.reset()
    yield


@pytest.fixture
def client(srv):
    return anthropic.Anthropic(api_key="test-key", base_url=srv.base_url, max_retries=0, timeout=20)


def raw(srv, method, path, body=None, headers=None, auth=True):
    """A plain HTTP call: (status, headers, parsed JSON or raw bytes)."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    hdrs = {"content-type": "application/json", **(headers or {})}
    if auth:
        hdrs.setdefault("x-api-key", "test-key")
        hdrs.setdefault("anthropic-version", "2023-06-01")  # the API requires one
    req = urllib.request.Request(srv.base_url + path, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, h, payload = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        status, h, payload = e.code, e.headers, e.read()
    try:
        return status, h, json.loads(payload)
    except ValueError:
        return status, h, payload


def wait_ended(client, batch_id, timeout=15.0):
    return wait_until_ended(client.messages.batches.retrieve, batch_id, timeout)


def text_of(message):
    assert len(message.content) == 1 and message.content[0].type == "text"
    return message.content[0].text


# ----------------------------------------------------------------------------- Messages

def test_messages_plain_text_is_deterministic(client, srv):
    rid, content = RECORDS[0]
    raw_resp = client.messages.with_raw_response.create(**params(item(rid, content)))
    m = raw_resp.parse()
    assert raw_resp.headers["request-id"].startswith("req_")
    assert m.id.startswith("msg_") and m.type == "message" and m.role == "assistant"
    assert m.model == MODEL and m.stop_reason == "end_turn" and m.stop_sequence is None
    assert text_of(m) == expected_output(content)
    assert text_of(m) != expected_output(RECORDS[1][1])
    again = client.messages.create(**params(item("another-id", content)))
    assert text_of(again) == text_of(m)  # seeded by content, not by id
    u = m.usage
    assert u.input_tokens == estimate_request_tokens(params(item(rid, content)))
    assert u.output_tokens == estimate_tokens(text_of(m))
    assert (u.cache_creation_input_tokens, u.cache_read_input_tokens, u.service_tier) == (0, 0, "standard")


def test_messages_with_schema_is_valid_and_deterministic(client):
    outputs = []
    for rid, content in RECORDS:
        m = client.messages.create(**params(item(rid, content), TASK_SCHEMA))
        value = json.loads(text_of(m))
        jsonschema.validate(value, TASK_SCHEMA)
        assert value == expected_output(content, TASK_SCHEMA)
        assert text_of(m) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        outputs.append(value)
    assert len({json.dumps(o, sort_keys=True) for o in outputs}) == len(RECORDS)
    words = set(RECORDS[0][1].replace(".", " ").replace("&", " ").split())
    assert set(outputs[0]["summary"].rstrip(".").split()) & words  # built from the content's words


def test_schema_subset_generator():
    schema = {
        "$defs": {"addr": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                            "zip": {"type": "string", "minLength": 5}},
                           "required": ["city", "zip"], "additionalProperties": False}},
        "type": "object",
        "properties": {
            "a": {"$ref": "#/$defs/addr"},
            "b": {"anyOf": [{"type": "integer", "exclusiveMinimum": 3, "exclusiveMaximum": 6},
                            {"type": "null"}]},
            "c": {"type": "array", "items": {"enum": [1, 2, 3]}, "minItems": 4, "maxItems": 4},
            "d": {"const": "fixed"},
            "e": {"type": "number", "minimum": -1.5, "maximum": -1.25},
            "f": {"type": "string", "format": "date-time"},
            "g": {"type": "string", "format": "email"},
            "h": {"allOf": [{"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}]},
        },
        "required": ["a", "b", "c", "d", "e", "f", "g", "h"],
        "additionalProperties": False,
    }
    fmt = jsonschema.Draft202012Validator.FORMAT_CHECKER
    for n in range(40):
        v = expected_output(f"record number {n} with some words", schema)
        jsonschema.Draft202012Validator(schema, format_checker=fmt).validate(v)
        assert len(v["c"]) == 4 and v["d"] == "fixed" and -1.5 <= v["e"] <= -1.25


def test_count_tokens_equals_usage(client):
    p = params(item(*RECORDS[1]), TASK_SCHEMA, system="You classify customer messages.")
    counted = client.messages.count_tokens(model=p["model"], messages=p["messages"], system=p["system"],
                                           output_config=p["output_config"])
    m = client.messages.create(**p)
    assert counted.input_tokens == m.usage.input_tokens == estimate_request_tokens(p)
    assert counted.input_tokens > estimate_request_tokens(params(item(*RECORDS[1])))


def test_messages_validation_errors(srv, client):
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model=MODEL, max_tokens=0, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in e.value.body["error"]["message"]
    for missing in ("model", "max_tokens", "messages"):
        body = params("hello")
        del body[missing]
        status, headers, payload = raw(srv, "POST", "/v1/messages", body)
        assert status == 400 and payload["type"] == "error"
        assert payload["error"] == {"type": "invalid_request_error", "message": f"{missing}: Field required"}
        assert payload["request_id"] == headers["request-id"]
    status, _, payload = raw(srv, "POST", "/v1/messages", b"{not json")
    assert status == 400 and payload["error"]["type"] == "invalid_request_error"


def test_unknown_route_is_404_with_error_body(srv):
    status, headers, payload = raw(srv, "GET", "/v1/nothing-here")
    assert status == 404 and payload["error"]["type"] == "not_found_error"
    assert headers["request-id"].startswith("req_")


# ----------------------------------------------------------------------------- packs

def test_pack_answers_match_single_answers(client, srv):
    m = client.messages.create(**params(pack(RECORDS), pack_schema(TASK_SCHEMA), max_tokens=4000))
    out = json.loads(text_of(m))
    jsonschema.validate(out, pack_schema(TASK_SCHEMA))
    assert [r["id"] for r in out["results"]] == [rid for rid, _ in RECORDS]
    for (rid, content), element in zip(RECORDS, out["results"]):
        single = json.loads(text_of(client.messages.create(**params(item(rid, content), TASK_SCHEMA))))
        assert {k: v for k, v in element.items() if k != "id"} == single
    # reordering the pack changes nothing per item
    rev = json.loads(text_of(client.messages.create(
        **params(pack(RECORDS[::-1]), pack_schema(TASK_SCHEMA), max_tokens=4000))))
    assert rev["results"][::-1] == out["results"]
    s = srv.stats()
    assert all(s["items_answered"][rid] == 3 for rid, _ in RECORDS)  # pack, single, pack


def test_pack_without_schema_and_free_text_schema(client):
    single = [text_of(client.messages.create(**params(item(rid, c)))) for rid, c in RECORDS]
    for schema in (None, FREE_TEXT_PACK_SCHEMA):
        out = json.loads(text_of(client.messages.create(**params(pack(RECORDS), schema))))
        assert out == {"results": [{"id": rid, "output": s} for (rid, _), s in zip(RECORDS, single)]}


def test_ids_are_unescaped(client):
    odd = 'a&b<"c">'
    out = json.loads(text_of(client.messages.create(**params(pack([(odd, "x y z"), ("plain", "q")])))))
    assert [r["id"] for r in out["results"]] == [odd, "plain"]


def test_max_tokens_truncates(client, srv):
    full = text_of(client.messages.create(**params(pack(RECORDS), pack_schema(TASK_SCHEMA), max_tokens=4000)))
    m = client.messages.create(**params(pack(RECORDS), pack_schema(TASK_SCHEMA), max_tokens=10))
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens <= 10
    assert len(text_of(m).encode()) <= 40 and full.startswith(text_of(m))
    s = srv.stats()
    assert s["items_sent"]["r-1"] == 2 and s["items_answered"]["r-1"] == 1  # truncated = not answered


# ----------------------------------------------------------------------------- caching

def test_prompt_caching_creation_then_read(client, srv):
    long_block = "Follow these long instructions carefully. " * 120  # > 1024 tokens
    system = [{"type": "text", "text": long_block, "cache_control": {"type": "ephemeral", "ttl": "5m"}},
              {"type": "text", "text": "Short uncached tail."}]
    prefix = system_tokens(system[:1])
    assert prefix >= 1024
    p = params(item(*RECORDS[0]), system=system)
    total = estimate_request_tokens(p)
    first = client.messages.create(**p).usage
    assert (first.cache_creation_input_tokens, first.cache_read_input_tokens) == (prefix, 0)
    assert first.input_tokens == total - prefix
    second = client.messages.create(**params(item(*RECORDS[1]), system=system)).usage
    assert (second.cache_creation_input_tokens, second.cache_read_input_tokens) == (0, prefix)
    # another model has its own cache
    other = client.messages.create(**params(item(*RECORDS[0]), system=system, model="claude-opus-4-8")).usage
    assert other.cache_creation_input_tokens == prefix
    # a short prefix is silently not cached
    short = [{"type": "text", "text": "Tiny.", "cache_control": {"type": "ephemeral"}}]
    for _ in range(2):
        u = client.messages.create(**params(item(*RECORDS[0]), system=short)).usage
        assert (u.cache_creation_input_tokens, u.cache_read_input_tokens) == (0, 0)
    # TTL (scaled): 5 minutes * 0.001 = 0.3 s
    srv.configure(time_scale=0.001)
    client.messages.create(**params(item(*RECORDS[0]), system=system + [{"type": "text", "text": "v2"}]))
    time.sleep(0.45)
    u = client.messages.create(**p).usage
    assert u.cache_creation_input_tokens == prefix and u.cache_read_input_tokens == 0


def test_caching_in_batches(client):
    long_block = "Shared batch instructions, long enough to cache. " * 100
    system = [{"type": "text", "text": long_block, "cache_control": {"type": "ephemeral"}}]
    reqs = [{"custom_id": f"c{i}", "params": params(item(f"x{i}", f"text {i}"), system=system)} for i in range(3)]
    b = client.messages.batches.create(requests=reqs)
    wait_ended(client, b.id)
    usages = {r.custom_id: r.result.message.usage for r in client.messages.batches.results(b.id)}
    prefix = system_tokens(system)
    assert usages["c0"].cache_creation_input_tokens == prefix
    assert usages["c1"].cache_read_input_tokens == usages["c2"].cache_read_input_tokens == prefix
    assert all(u.service_tier == "batch" for u in usages.values())


# ----------------------------------------------------------------------------- auth

def test_auth_both_headers_accepted_and_missing_rejected(srv):
    body = params(item(*RECORDS[0]))
    status, _, payload = raw(srv, "POST", "/v1/messages", body, headers={"x-api-key": "k1"})
    assert status == 200 and payload["type"] == "message"
    status, _, payload = raw(srv, "POST", "/v1/messages", body, auth=False,
                             headers={"authorization": "Bearer k2", "anthropic-version": "2023-06-01"})
    assert status == 200 and payload["type"] == "message"
    status, headers, payload = raw(srv, "POST", "/v1/messages", body, auth=False)
    assert status == 401 and payload["error"]["type"] == "authentication_error"
    assert payload["request_id"] == headers["request-id"]
    status, _, payload = raw(srv, "GET", "/v1/messages/batches", auth=False,
                             headers={"authorization": "Bearer "})
    assert status == 401
    srv.configure(api_keys=["only-this"])
    status, _, payload = raw(srv, "POST", "/v1/messages", body, headers={"x-api-key": "k1"})
    assert status == 401
    status, _, payload = raw(srv, "POST", "/v1/messages", body, headers={"x-api-key": "only-this"})
    assert status == 200


def test_sdk_bearer_auth_and_missing_key(srv):
    ok = anthropic.Anthropic(api_key="sdk-key", base_url=srv.base_url, max_retries=0)
    assert ok.messages.create(**params("hi")).type == "message"
    no_key = anthropic.Anthropic(api_key="x", base_url=srv.base_url, max_retries=0,
                                 default_headers={"Authorization": anthropic.Omit()})
    with pytest.raises(anthropic.AuthenticationError) as e:
        no_key.messages.create(**params("hi"))
    assert e.value.body["error"]["type"] == "authentication_error"


# ----------------------------------------------------------------------------- batches

def batch_requests(n, schema=TASK_SCHEMA, prefix="req"):
    return [{"custom_id": f"{prefix}-{i}", "params": params(item(f"id-{i}", f"content number {i} words"), schema)}
            for i in range(n)]


def test_batch_lifecycle_and_results_out_of_order(client, srv):
    reqs = batch_requests(60)
    b = client.messages.batches.create(requests=reqs)
    assert b.id.startswith("msgbatch_") and b.type == "message_batch"
    assert b.processing_status == "in_progress" and b.results_url is None and b.ended_at is None
    assert b.request_counts.processing == 60 and b.request_counts.succeeded == 0
    assert (b.expires_at - b.created_at).total_seconds() == pytest.approx(24 * 3600, abs=1)
    ended = wait_ended(client, b.id)
    assert ended.request_counts.succeeded == 60 and ended.request_counts.processing == 0
    assert ended.ended_at is not None and ended.results_url.endswith(f"/v1/messages/batches/{b.id}/results")
    results = list(client.messages.batches.results(b.id))
    ids = [r.custom_id for r in results]
    assert sorted(ids) == sorted(r["custom_id"] for r in reqs)
    assert ids != [r["custom_id"] for r in reqs]  # not request order
    assert [r.custom_id for r in client.messages.batches.results(b.id)] == ids  # seeded: stable
    by_id = {r.custom_id: r for r in results}
    r7 = by_id["req-7"].result
    assert r7.type == "succeeded" and r7.message.usage.service_tier == "batch"
    assert json.loads(text_of(r7.message)) == expected_output("content number 7 words", TASK_SCHEMA)
    assert r7.message.usage.input_tokens == estimate_request_tokens(reqs[7]["params"])
    s = srv.stats(items=False)
    assert s["batches_created"] == 1 and s["batch_requests_received"] == 60
    assert s["batch_results"]["succeeded"] == 60 and s["items_answered_total"] == 60


def test_results_are_streamed_chunked(srv, client):
    b = client.messages.batches.create(requests=batch_requests(5))
    wait_ended(client, b.id)
    req = urllib.request.Request(f"{srv.base_url}/v1/messages/batches/{b.id}/results",
                                 headers={"x-api-key": "k", "anthropic-version": "2023-06-01"})
    with urllib.request.urlopen(req) as resp:
        assert resp.headers.get("Transfer-Encoding") == "chunked"
        lines = resp.read().decode().splitlines()
    assert len(lines) == 5 and all(json.loads(line)["result"]["type"] == "succeeded" for line in lines)


def test_batch_list_paging(client):
    made = [client.messages.batches.create(requests=batch_requests(1, prefix=f"b{k}")).id for k in range(5)]
    newest_first = made[::-1]
    page = client.messages.batches.list(limit=2)
    assert [b.id for b in page.data] == newest_first[:2]
    assert page.has_more is True and page.first_id == newest_first[0] and page.last_id == newest_first[1]
    assert [b.id for b in client.messages.batches.list(limit=2)] == newest_first  # auto-pagination
    after = client.messages.batches.list(after_id=newest_first[1], limit=10)
    assert [b.id for b in after.data] == newest_first[2:] and after.has_more is False
    before = client.messages.batches.list(before_id=newest_first[3], limit=2)
    assert [b.id for b in before.data] == newest_first[1:3] and before.has_more is True
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.list(limit=1001)


def test_batch_cancel(client, srv):
    srv.configure(batch_delay_s=1.5)
    b = client.messages.batches.create(requests=batch_requests(300))
    time.sleep(0.2)
    c = client.messages.batches.cancel(b.id)
    assert c.processing_status in ("canceling", "ended") and c.cancel_initiated_at is not None
    ended = wait_ended(client, b.id, timeout=5)
    rc = ended.request_counts
    assert rc.canceled > 0 and rc.succeeded + rc.canceled == 300 and rc.processing == 0
    kinds = [r.result.type for r in client.messages.batches.results(b.id)]
    assert kinds.count("canceled") == rc.canceled and kinds.count("succeeded") == rc.succeeded


def test_batch_delete(client, srv):
    srv.configure(batch_delay_s=30)
    b = client.messages.batches.create(requests=batch_requests(2))
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.delete(b.id)
    client.messages.batches.cancel(b.id)
    wait_ended(client, b.id)
    deleted = client.messages.batches.delete(b.id)
    assert deleted.id == b.id and deleted.type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(b.id)


def test_batch_expiry(client, srv):
    srv.configure(batch_delay_s=10, batch_expire_after_s=0.3)
    b = client.messages.batches.create(requests=batch_requests(50))
    ended = wait_ended(client, b.id, timeout=5)
    rc = ended.request_counts
    assert rc.expired > 0 and rc.succeeded + rc.expired == 50
    assert {r.result.type for r in client.messages.batches.results(b.id)} <= {"succeeded", "expired"}


def test_batch_not_found(client):
    for call in (client.messages.batches.retrieve, client.messages.batches.cancel,
                 client.messages.batches.delete):
        with pytest.raises(anthropic.NotFoundError) as e:
            call("msgbatch_doesnotexist")
        assert e.value.body["error"]["type"] == "not_found_error"


def test_batch_create_400s(client, srv):
    one = params("x")
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.batches.create(requests=[{"custom_id": "a" * 65, "params": one}])
    assert e.value.body["error"]["message"] == "requests.0.custom_id: String should have at most 64 characters"
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.batches.create(requests=[{"custom_id": "ok", "params": one},
                                                 {"custom_id": "bad id!", "params": one}])
    assert e.value.body["error"]["message"].startswith("requests.1.custom_id: String should match pattern")
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.batches.create(requests=[{"custom_id": "same", "params": one}] * 2)
    assert "requests.1.custom_id" in e.value.body["error"]["message"] and "Duplicate" in str(e.value)
    # 100,001 requests, built as bytes (cheap), rejected as a whole
    line = b'{"custom_id":"c%d","params":{"model":"m","max_tokens":1,"messages":[]}}'
    body = b'{"requests":[' + b",".join(line % i for i in range(100_001)) + b"]}"
    status, _, payload = raw(srv, "POST", "/v1/messages/batches", body)
    assert status == 400 and "at most 100000" in payload["error"]["message"]
    # body size limit (256 MB in production; lowered here to keep the test fast)
    srv.configure(max_batch_bytes=10_000)
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.batches.create(requests=batch_requests(40))
    assert "exceeds the maximum" in e.value.body["error"]["message"]
    assert srv.stats()["batches_created"] == 0


def test_invalid_params_in_batch_come_back_errored(client):
    reqs = batch_requests(2)
    reqs.append({"custom_id": "bad-max", "params": {**params(item("z", "zzz")), "max_tokens": 0}})
    reqs.append({"custom_id": "no-messages", "params": {"model": MODEL, "max_tokens": 5}})
    b = client.messages.batches.create(requests=reqs)
    ended = wait_ended(client, b.id)
    assert ended.request_counts.errored == 2 and ended.request_counts.succeeded == 2
    res = {r.custom_id: r.result for r in client.messages.batches.results(b.id)}
    assert res["bad-max"].type == "errored"
    assert res["bad-max"].error.error.type == "invalid_request_error"
    assert "max_tokens" in res["bad-max"].error.error.message
    assert "messages: Field required" in res["no-messages"].error.error.message


# ----------------------------------------------------------------------------- rate limits

def test_rpm_limit_429_with_headers(client, srv):
    srv.configure(rpm=60, itpm=600_000, otpm=60_000)  # buckets: 1 request, 10k in, 1k out
    first = client.messages.with_raw_response.create(**params("hello"))
    h = first.headers
    assert h["anthropic-ratelimit-requests-limit"] == "60"
    assert h["anthropic-ratelimit-requests-remaining"] == "0"
    assert h["anthropic-ratelimit-input-tokens-limit"] == "600000"
    assert h["anthropic-ratelimit-output-tokens-limit"] == "60000"
    assert h["anthropic-ratelimit-tokens-limit"] in ("600000", "60000")
    assert h["anthropic-ratelimit-requests-reset"].endswith("Z") and "T" in h["anthropic-ratelimit-requests-reset"]
    with pytest.raises(anthropic.RateLimitError) as e:
        client.messages.create(**params("hello"))
    err = e.value
    assert err.body["error"]["type"] == "rate_limit_error" and "RPM" in err.body["error"]["message"]
    assert int(err.response.headers["retry-after"]) >= 1
    assert "anthropic-ratelimit-requests-remaining" in err.response.headers
    # another model has its own buckets
    assert client.messages.create(**params("hello", model="claude-opus-4-8")).type == "message"
    assert srv.stats()["rate_limited"] == 1


def test_itpm_and_otpm_limits(client, srv):
    srv.configure(itpm=600)  # bucket of 10 tokens
    big = params("word " * 200)
    with pytest.raises(anthropic.RateLimitError) as e:  # fits only when the bucket is full: not yet
        client.messages.create(**big)
        client.messages.create(**big)
    assert "ITPM" in e.value.body["error"]["message"]
    assert int(e.value.response.headers["retry-after"]) >= 1
    srv.configure(itpm=None, otpm=600)  # bucket of 10 output tokens, charged after the answer
    m = client.messages.create(**params(item(*RECORDS[0]), TASK_SCHEMA))
    assert m.usage.output_tokens > 10
    with pytest.raises(anthropic.RateLimitError) as e:
        client.messages.create(**params("again"))
    assert "OTPM" in e.value.body["error"]["message"]
    assert int(e.value.response.headers["retry-after"]) >= 2


def test_default_rate_limit_headers_when_unlimited(client, srv):
    """Without limits the headers still come, with documented default limits
    (emulator/config.py DEFAULT_*), and nothing is refused (the defaults are reported, not enforced)."""
    for _ in range(3):
        h = client.messages.with_raw_response.create(**params("x")).headers
    assert h["anthropic-ratelimit-requests-limit"] == "4000"
    assert h["anthropic-ratelimit-input-tokens-limit"] == "2000000"
    assert h["anthropic-ratelimit-output-tokens-limit"] == "400000"
    assert int(h["anthropic-ratelimit-requests-remaining"]) < 4000  # 3 taken, refilling
    assert srv.stats()["rate_limited"] == 0
    assert h["anthropic-ratelimit-tokens-reset"].endswith("Z")
    srv.configure(default_rpm=8000)
    h = client.messages.with_raw_response.create(**params("x")).headers
    assert h["anthropic-ratelimit-requests-limit"] == "8000"


def test_latency_is_applied(client, srv):
    srv.configure(latency_ms=200, output_tokens_per_s=100, time_scale=0.5)
    t = time.monotonic()
    m = client.messages.create(**params("hello world"))
    expected = (0.2 + m.usage.output_tokens / 100) * 0.5
    assert time.monotonic() - t >= expected * 0.9


# ----------------------------------------------------------------------------- HTTP faults

def test_status_faults(client, srv):
    srv.configure(faults={"status_429": {"times": 1, "retry_after": 3}, "spend_cap_429": {"times": 1},
                          "status_529": {"times": 1}, "status_500": {"times": 1}})
    with pytest.raises(anthropic.RateLimitError) as e:
        client.messages.create(**params("x"))
    assert "monthly spend limit" in e.value.body["error"]["message"]
    assert "retry-after" not in e.value.response.headers
    with pytest.raises(anthropic.RateLimitError) as e:
        client.messages.create(**params("x"))
    assert e.value.response.headers["retry-after"] == "3"
    with pytest.raises(anthropic.InternalServerError) as e:
        client.messages.create(**params("x"))
    assert e.value.status_code == 529 and e.value.body["error"]["type"] == "overloaded_error"
    with pytest.raises(anthropic.InternalServerError) as e:
        client.messages.create(**params("x"))
    assert e.value.status_code == 500 and e.value.body["error"]["type"] == "api_error"
    assert client.messages.create(**params("x")).type == "message"  # all used up
    s = srv.stats()
    assert s["faults_fired"] == {"spend_cap_429": 1, "status_429": 1, "status_529": 1, "status_500": 1}
    assert s["requests"]["POST /v1/messages"] == {"429": 2, "529": 1, "500": 1, "200": 1}


def test_fault_rate_is_seeded_and_ids_target(client, srv):
    def pattern():
        srv.reset()
        out = []
        for i in range(30):
            try:
                client.messages.create(**params(item(f"p{i}", "x")))
                out.append(0)
            except anthropic.InternalServerError:
                out.append(1)
        return out

    srv.configure(faults={"status_500": 0.5})
    a = pattern()
    assert 5 < sum(a) < 25 and pattern() == a
    srv.configure(faults={"status_500": {"ids": ["victim"]}})
    srv.reset()
    assert client.messages.create(**params(item("bystander", "x"))).type == "message"
    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(**params(pack([("bystander", "x"), ("victim", "y")])))


def test_slow_timeout_and_drop(srv):
    c = anthropic.Anthropic(api_key="k", base_url=srv.base_url, max_retries=0, timeout=0.4)
    srv.configure(faults={"slow": {"times": 1, "slow_s": 0.25}})
    t = time.monotonic()
    assert c.messages.create(**params("x")).type == "message"
    assert time.monotonic() - t >= 0.25
    srv.configure(faults={"timeout": {"times": 1, "hang_s": 1.0}})
    with pytest.raises(anthropic.APITimeoutError):
        c.messages.create(**params(item("t1", "x")))
    srv.configure(faults={"drop_connection": {"times": 1}})
    with pytest.raises(anthropic.APIConnectionError) as e:
        c.messages.create(**params(item("d1", "x")))
    assert not isinstance(e.value, anthropic.APITimeoutError)
    assert c.messages.create(**params("x")).type == "message"
    time.sleep(0.7)  # let the hung handler finish
    s = srv.stats()
    assert s["faults_fired"] == {"slow": 1, "timeout": 1, "drop_connection": 1}
    assert s["items_sent"] == {"t1": 1, "d1": 1} and s["items_answered"] == {}
    assert s["requests"]["POST /v1/messages"]["dropped"] == 1
    assert s["requests"]["POST /v1/messages"]["timeout"] == 1


def test_fault_config_validation(srv):
    with pytest.raises(ValueError):
        srv.configure(faults={"no_such_fault": 1})
    with pytest.raises(ValueError):
        srv.configure(faults={"status_500": {"rate": 2}})
    with pytest.raises(ValueError):
        srv.configure(faults={"status_500": {"bogus": 1}})
    with pytest.raises(ValueError):
        srv.configure(not_a_field=1)
    # batch-level knobs are accepted in a faults mapping and become config fields
    cfg = srv.configure(faults={"batch_delay_s": 4, "batch_expire_after_s": 9, "status_500": 0.25})
    assert (cfg.batch_delay_s, cfg.batch_expire_after_s, cfg.faults) == (4, 9, {"status_500": 0.25})


# ----------------------------------------------------------------------------- pack faults

def pack_call(client, schema=None):
    return client.messages.create(**params(pack(RECORDS), pack_schema(TASK_SCHEMA) if schema is None else schema,
                                           max_tokens=4000))


def test_pack_drop_duplicate_invent(client, srv):
    ids = [rid for rid, _ in RECORDS]
    srv.configure(faults={"pack_drop_ids": {"times": 1, "ids": ["r-2"]}})
    got = [r["id"] for r in json.loads(text_of(pack_call(client)))["results"]]
    assert got == ["r-1", "r-3", "r-4"]
    assert "r-2" not in srv.stats()["items_answered"]

    srv.configure(faults={"pack_duplicate_ids": {"times": 1, "count": 2}})
    srv.reset()
    results = json.loads(text_of(pack_call(client)))["results"]
    got = [r["id"] for r in results]
    dupes = {i for i in got if got.count(i) > 1}
    assert len(got) == 6 and len(dupes) == 2 and set(got) == set(ids)
    assert set(srv.stats()["items_answered"]) == set(ids) - dupes

    srv.configure(faults={"pack_invent_ids": {"times": 1, "count": 2}})
    srv.reset()
    got = [r["id"] for r in json.loads(text_of(pack_call(client)))["results"]]
    assert got[:4] == ids and len(got) == 6 and not set(got[4:]) & set(ids)
    assert set(srv.stats()["items_answered"]) == set(ids)


def test_pack_invalid_json_max_tokens_ignore_schema(client, srv):
    srv.configure(faults={"pack_invalid_json": {"times": 1}})
    with pytest.raises(ValueError):
        json.loads(text_of(pack_call(client)))
    assert srv.stats()["items_answered"] == {}

    srv.configure(faults={"pack_max_tokens": {"times": 1}})
    m = pack_call(client)
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == estimate_tokens(text_of(m))
    with pytest.raises(ValueError):
        json.loads(text_of(m))

    srv.configure(faults={"pack_ignore_schema": {"times": 1, "ids": ["r-3"]}})
    srv.reset()
    results = json.loads(text_of(pack_call(client)))["results"]
    validator = jsonschema.Draft202012Validator(item_schema(TASK_SCHEMA))
    bad = [r["id"] for r in results if not validator.is_valid(r)]
    assert bad == ["r-3"]
    assert set(srv.stats()["items_answered"]) == {"r-1", "r-2", "r-4"}
    # an enum-only item schema gets an out-of-enum value
    enum_task = {"type": "object", "properties": {"label": {"type": "string", "enum": ["a", "b"]}}}
    srv.configure(faults={"pack_ignore_schema": {"times": 1}})
    res = json.loads(text_of(pack_call(client, pack_schema(enum_task))))["results"]
    assert sum(r["label"] not in ("a", "b") for r in res) == 1


def _keyed_pack_call(client):
    """A pack as the pipeline writes it: items numbered n="1".., answers keyed by n."""
    return client.messages.create(**params(packing.render_pack(RECORDS), packing.pack_schema(TASK_SCHEMA),
                                           max_tokens=4000))


def test_pipeline_packs_are_answered_by_number(client, srv):
    results = json.loads(text_of(_keyed_pack_call(client)))["results"]
    assert [r["n"] for r in results] == [1, 2, 3, 4] and all("id" not in r for r in results)
    for (rid, content), element in zip(RECORDS, results):
        single = json.loads(text_of(client.messages.create(**params(item(rid, content), TASK_SCHEMA))))
        assert {k: v for k, v in element.items() if k != "n"} == single
    # The emulator still accounts per record id, read from the prompt.
    assert srv.stats()["items_answered"] == {rid: 2 for rid, _ in RECORDS}


@pytest.mark.parametrize("faults, check", [
    ({"pack_drop_ids": {"times": 1, "ids": ["r-2"]}}, lambda o: o.missing == ("r-2",)),
    ({"pack_duplicate_ids": {"times": 1, "ids": ["r-3"]}}, lambda o: o.duplicated == ("r-3",)),
    ({"pack_invent_ids": {"times": 1, "count": 2}}, lambda o: o.invented == ("5", "6")),
    ({"pack_ignore_schema": {"times": 1, "ids": ["r-4"]}}, lambda o: set(o.invalid) == {"r-4"}),
])
def test_pack_faults_on_numbered_items_hit_the_targeted_records(client, srv, faults, check):
    """Faults pick records by id; the pipeline's parser finds exactly them through the keys."""
    srv.configure(faults=faults)
    outcome = answers.parse_pack_answer(text_of(_keyed_pack_call(client)), "end_turn",
                                        [rid for rid, _ in RECORDS], TASK_SCHEMA)
    assert check(outcome)
    assert set(outcome.valid) == set(srv.stats()["items_answered"])


def test_pack_faults_do_not_touch_single_requests(client, srv):
    srv.configure(faults={"pack_invalid_json": 1.0, "pack_drop_ids": 1.0})
    m = client.messages.create(**params(item(*RECORDS[0]), TASK_SCHEMA))
    json.loads(text_of(m))
    assert srv.stats()["faults_fired"] == {}


# ----------------------------------------------------------------------------- batch item faults

def test_batch_item_faults(client, srv):
    srv.configure(faults={"batch_item_errored": {"times": 2}, "batch_item_expired": {"ids": ["id-5"]}})
    b = client.messages.batches.create(requests=batch_requests(10))
    ended = wait_ended(client, b.id)
    assert (ended.request_counts.errored, ended.request_counts.expired, ended.request_counts.succeeded) == (2, 1, 7)
    res = {r.custom_id: r.result for r in client.messages.batches.results(b.id)}
    assert res["req-5"].type == "expired"
    errored = [r for r in res.values() if r.type == "errored"]
    assert {r.error.error.type for r in errored} == {"api_error"}
    s = srv.stats()
    assert s["items_answered_total"] == 7 and "id-5" not in s["items_answered"]
    assert s["batch_results"] == {"succeeded": 7, "errored": 2, "canceled": 0, "expired": 1}


def test_pack_faults_apply_inside_batches(client, srv):
    srv.configure(faults={"pack_drop_ids": {"times": 1, "ids": ["r-4"]}})
    reqs = [{"custom_id": "pack-0", "params": params(pack(RECORDS), pack_schema(TASK_SCHEMA), max_tokens=4000)}]
    b = client.messages.batches.create(requests=reqs)
    wait_ended(client, b.id)
    (r,) = list(client.messages.batches.results(b.id))
    assert [x["id"] for x in json.loads(text_of(r.result.message))["results"]] == ["r-1", "r-2", "r-3"]
    assert set(srv.stats()["items_answered"]) == {"r-1", "r-2", "r-3"}


# ----------------------------------------------------------------------------- stats

def test_duplicates_billed(client, srv):
    a, b = RECORDS[0], RECORDS[1]
    srv.configure(faults={"status_500": {"times": 1}})
    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(**params(item(*a)))
    client.messages.create(**params(item(*a)))          # retry after a failure: not a duplicate
    s = srv.stats()
    assert s["items_sent"][a[0]] == 2 and s["items_answered"][a[0]] == 1 and s["duplicates_billed"] == 0
    client.messages.create(**params(pack([a, b])))      # a again, after it was answered
    s = srv.stats()
    assert s["duplicates_billed"] == 1 and s["duplicate_ids"] == {a[0]: 1}
    assert s["items_answered"] == {a[0]: 2, b[0]: 1}
    # the same record in two batches processed one after the other is billed twice too
    reqs = [{"custom_id": "one", "params": params(item(*b))}]
    wait_ended(client, client.messages.batches.create(requests=reqs).id)
    s = srv.stats()
    assert s["duplicates_billed"] == 2 and s["duplicate_ids"][b[0]] == 1
    assert s["messages_calls"] == 3 and s["messages_succeeded"] == 2
    assert s["tokens"]["batch"]["input_tokens"] == estimate_request_tokens(reqs[0]["params"])


def test_control_endpoints_over_http(srv, client):
    client.messages.create(**params(item("h1", "hello")))
    status, _, stats = raw(srv, "GET", "/_emulator/stats", auth=False)
    assert status == 200 and stats["items_sent"] == {"h1": 1} and stats["messages_calls"] == 1
    status, _, light = raw(srv, "GET", "/_emulator/stats?items=0", auth=False)
    assert "items_sent" not in light and light["items_sent_total"] == 1
    status, _, cfg = raw(srv, "POST", "/_emulator/config", {"rpm": 120, "faults": {"status_500": {"times": 1}}},
                         auth=False)
    assert status == 200 and cfg["rpm"] == 120 and srv.config.rpm == 120
    status, _, err = raw(srv, "POST", "/_emulator/config", {"rpm": -1}, auth=False)
    assert status == 400 and err["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(**params("x"))
    status, _, _ = raw(srv, "POST", "/_emulator/reset", auth=False)
    assert status == 200 and srv.stats()["messages_calls"] == 0


# ----------------------------------------------------------------------------- command line

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_help():
    out = subprocess.run([sys.executable, "-m", "emulator", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0
    for flag in ("--port", "--host", "--batch-delay-s", "--seed", "--rpm", "--itpm", "--otpm", "--latency-ms",
                 "--faults", "--time-scale", "pack_drop_ids", "status_529"):
        assert flag in out.stdout


def test_cli_serves(tmp_path):
    port = free_port()
    faults = tmp_path / "faults.yaml"
    faults.write_text("status_500:\n  times: 1\n")
    proc = subprocess.Popen([sys.executable, "-m", "emulator", "--port", str(port), "--faults", str(faults),
                             "--rpm", "6000"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in line
        c = anthropic.Anthropic(api_key="k", base_url=f"http://127.0.0.1:{port}", max_retries=0)
        with pytest.raises(anthropic.InternalServerError):
            c.messages.create(**params("x"))
        r = c.messages.with_raw_response.create(**params("x"))
        assert r.headers["anthropic-ratelimit-requests-limit"] == "6000"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0
