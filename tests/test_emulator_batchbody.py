"""loads_batch_body: the value (or the error) of jsonutil.loads, repeated params shared."""
from __future__ import annotations

import json
import sys
import time

import pytest

from emulator import jsonutil
from emulator.batchbody import MAX_SHARED_DEPTH, loads_batch_body

SYSTEM = [{"type": "text", "text": "Judge the sentiment.\n\"Quoted\" \u00e9 {braces} [x] " * 20,
           "cache_control": {"type": "ephemeral"}}]
OUTPUT_CONFIG = {"format": {"type": "json_schema", "schema": {
    "type": "object", "properties": {"label": {"type": "string", "description": "x " * 150}},
    "required": ["label"], "additionalProperties": False}}}


def params(i, **extra):
    return {"model": "m", "system": SYSTEM, "output_config": OUTPUT_CONFIG, "max_tokens": 5,
            "messages": [{"role": "user", "content": f'<item id="r{i}">text {i}</item>'}], **extra}


def body_bytes(requests, separators=(",", ":"), **dumps):
    """The body as the pipeline and the SDK send it: compact (unless told), UTF-8."""
    return json.dumps({"requests": requests}, ensure_ascii=False, separators=separators, **dumps).encode()


def plain(n=5):
    return [{"custom_id": f"c{i}", "params": params(i)} for i in range(n)]


def outcome(loads, raw):
    try:
        return "value", jsonutil.dumps_bytes(loads(raw))
    except ValueError as e:
        return "error", str(e)


def assert_same(raw):
    assert outcome(loads_batch_body, raw) == outcome(jsonutil.loads, raw)


def test_repeated_values_are_one_object_and_the_value_is_unchanged():
    raw = body_bytes(plain())
    body = loads_batch_body(bytearray(raw))
    assert jsonutil.dumps_bytes(body) == jsonutil.dumps_bytes(jsonutil.loads(raw))
    reqs = body["requests"]
    assert all(r["params"]["system"] is reqs[0]["params"]["system"] for r in reqs)
    assert all(r["params"]["output_config"] is reqs[0]["params"]["output_config"] for r in reqs)


@pytest.mark.parametrize("requests", [
    # values that differ from the first one, or are missing, stay as sent
    plain(3) + [{"custom_id": "d", "params": params(9, system="other " * 100)},
                {"custom_id": "e", "params": {"model": "m", "messages": []}}],
    # the same value under the same key outside params: not a params value, so parsed as sent
    plain(3) + [{"custom_id": "f", "params": params(1, metadata={"system": SYSTEM})}],
    plain(2) + [{"custom_id": "g", "params": params(1), "system": SYSTEM}],
    # the placeholder's own value, as a params value and elsewhere
    plain(3) + [{"custom_id": "h", "params": params(1, system="\x00")}],
    plain(3) + [{"custom_id": "i", "params": params(1, note="\x00")}],
    # a key that ends in "system" after an escaped quote is not the key system
    plain(3) + [{"custom_id": "j", "params": params(1, **{'a"system': SYSTEM})}],
    # the first value is too short to be worth sharing
    [{"custom_id": f"k{i}", "params": params(i, system="short")} for i in range(3)],
])
def test_the_value_is_the_one_loads_gives(requests):
    assert_same(body_bytes(requests))


def test_spaced_json_and_repeated_keys_give_what_loads_gives():
    assert_same(body_bytes(plain(), indent=1))
    assert_same(body_bytes(plain(), separators=(", ", ": ")))
    one = json.dumps(params(0))[1:-1]
    repeated = f'{{"requests":[{{"custom_id":"a","params":{{{one},{one}}}}}]}}'  # keys twice
    assert_same(repeated.encode())
    twice = body_bytes(plain())[1:-1]
    assert_same(b"{" + twice + b"," + twice + b"}")  # "requests" twice: the last one counts


@pytest.mark.parametrize("cut", [
    lambda raw: raw[: len(raw) // 2],                                   # truncated inside a value
    lambda raw: raw[:-2] + b",]}",                                      # trailing comma
    lambda raw: raw.replace(b'"max_tokens":5', b'"max_tokens":NaN'),   # NaN outside shared values
    lambda raw: raw.replace(b'"ephemeral"', b'"ephemeral","x":NaN'),  # NaN inside them
    lambda raw: raw.replace(b'"ephemeral"', b'"\\ud800"'),              # a lone surrogate inside them
    lambda raw: raw + b"x",
])
def test_an_invalid_body_gets_the_error_loads_gives(cut):
    raw = cut(body_bytes(plain()))
    assert outcome(jsonutil.loads, raw)[0] == "error"
    assert_same(raw)


def test_a_placeholder_in_the_body_is_never_taken_for_a_replaced_value():
    # "\x00" as a params value, and a replaced value that is not one: as many
    # placeholders put back as replaced, yet not the same ones
    assert_same(body_bytes(plain(3) + [{"custom_id": "f", "params": params(1, metadata={"system": SYSTEM})},
                                       {"custom_id": "h", "params": params(2, system="\x00")}]))
    # the schema holds the instructions (replaced first): not shared with a placeholder inside
    nested = {**OUTPUT_CONFIG, "system": SYSTEM}
    schemas = [{"custom_id": f"c{i}", "params": params(i, output_config=nested)} for i in range(3)]
    nuls = [{"custom_id": f"z{i}", "params": params(i, system="\x00")} for i in range(3)]
    assert_same(body_bytes(schemas + nuls))


def test_a_value_nested_past_the_limit_is_parsed_where_it_stands():
    deep = "x" * 300
    for _ in range(MAX_SHARED_DEPTH + 1):
        deep = [deep]
    assert_same(body_bytes([{"custom_id": f"c{i}", "params": params(i, system=deep)} for i in range(3)]))
    # parsed alone the value is within orjson's 1,024 levels, inside the body it is not
    too_deep = b"[" * 1020 + b"]" * 1020
    raw = body_bytes(plain(3)).replace(b'"ephemeral"', too_deep)
    assert jsonutil.loads(raw.split(b'"system":', 1)[1].split(b',"output_config"', 1)[0])
    assert outcome(jsonutil.loads, raw)[0] == "error"
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(5000)  # so that the json module can find where the value ends
    try:
        assert_same(raw)
    finally:
        sys.setrecursionlimit(limit)


def test_the_receive_buffer_hands_out_exact_sizes_and_reuses_large_ones():
    from emulator.server import ReceiveBuffer
    buffers = ReceiveBuffer()
    big = ReceiveBuffer.MIN_BYTES
    first = buffers.take(big + 10)
    assert len(first) == big + 10
    buffers.give_back(first)
    again = buffers.take(big + 3)  # smaller: the same memory, cut to size
    assert again is first and len(again) == big + 3
    assert len(buffers.take(big)) == big  # taken already: a fresh one
    buffers.give_back(again)
    assert len(buffers.take(big + 100)) == big + 100  # larger: grown to size
    buffers.give_back(bytearray(10))  # small bodies are not kept
    assert len(buffers.take(20)) == 20


def test_large_creates_in_a_row_each_get_their_own_requests(api_env):
    """Each large body is read into the previous one's memory: every batch
    still holds exactly the requests it was sent."""
    import anthropic
    import emulator
    from emulator.server import ReceiveBuffer
    system = "x" * 9_000
    with emulator.running() as emu:
        client = anthropic.Anthropic(base_url=emu.base_url)
        batches = {}
        for n, count in enumerate((2_100, 1_900, 2_000)):  # each body over ReceiveBuffer.MIN_BYTES
            requests = [{"custom_id": f"b{n}-{i}", "params": {
                "model": "claude-haiku-4-5", "max_tokens": 16, "system": system,
                "messages": [{"role": "user", "content": f"batch {n} request {i}"}]}} for i in range(count)]
            assert len(json.dumps({"requests": requests})) > ReceiveBuffer.MIN_BYTES
            batches[client.messages.batches.create(requests=requests).id] = {r["custom_id"] for r in requests}
        for batch_id, ids in batches.items():
            for _ in range(200):
                if client.messages.batches.retrieve(batch_id).processing_status == "ended":
                    break
                time.sleep(0.05)
            assert {r.custom_id for r in client.messages.batches.results(batch_id)} == ids
