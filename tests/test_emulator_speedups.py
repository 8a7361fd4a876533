"""The emulator's fast paths give what the general code gives.

Batch processing answers a request holding one record with
Engine.answer_single (no Prepared/Answer objects) and generates values with
per-schema generators (schemagen.schema_generator); both must agree, byte for
byte, with prepare()+complete() and with schemagen.generate.
"""
from __future__ import annotations

import pytest

from emulator import jsonutil, prompts, schemagen
from emulator.config import EmulatorConfig
from emulator.memo import IdentityMemo
from emulator.server import State

SENTIMENT = {
    "type": "object", "additionalProperties": False, "required": ["sentiment", "score", "reason"],
    "properties": {
        "sentiment": {"enum": ["positive", "neutral", "negative", "mixed"]},
        "score": {"type": "number", "description": "How happy.\n\n{maximum: 1, minimum: -1}"},
        "reason": {"type": "string", "description": "Why.\n\n{maxLength: 200}"}}}

NESTED = {
    "type": "object",
    "properties": {
        "who": {"type": "object", "properties": {
            "name": {"type": "string", "minLength": 40},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "minItems": 2},
            "age": {"type": ["integer", "null"], "minimum": 18}}},
        "pick": {"oneOf": [{"type": "boolean"}, {"type": "object", "properties": {"x": {"type": "number"}}}]},
        "const": {"const": {"a": 1}},
        "when": {"type": "string", "format": "date-time"},
        "steps": {"type": "array", "prefixItems": [{"type": "integer"}], "items": {"type": "boolean"}},
    },
    "required": ["who", "extra"],
}

CONTENTS = ["Channel: email\nSubject: Late parcel\n\nMy order LS-1 is two weeks late. Fix it!",
            "Très bien « merci » — l’équipe a répondu vite.",
            "", "x", "word " * 80]


@pytest.mark.parametrize("schema", [SENTIMENT, NESTED, {"type": "string"}, {"enum": [1, 2.5, None]},
                                    {"anyOf": [{"type": "integer"}, {"type": "string", "format": "uuid"}]}])
@pytest.mark.parametrize("content", CONTENTS)
def test_a_schema_generator_gives_what_generate_gives(schema, content):
    item = prompts.Item("i", content)
    expected = schemagen.generate(schemagen.compile_schema(schema), item)
    assert jsonutil.dumps_bytes(schemagen.schema_generator(schema)(item)) == jsonutil.dumps_bytes(expected)


def _params(content, schema=None, max_tokens=300, system=None):
    params = {"model": "m", "max_tokens": max_tokens, "messages": [{"role": "user", "content": content}]}
    if schema is not None:
        params["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    if system is not None:
        params["system"] = system
    return params


BIG_SYSTEM = [{"type": "text", "text": "Judge the sentiment of each email. " * 200,
               "cache_control": {"type": "ephemeral"}}]


@pytest.mark.parametrize("params", [
    _params('<item id="a1">Great service, thanks!</item>'),
    _params('<item id="a2">Great service, thanks!</item>', SENTIMENT),
    _params('<item id="a3">Great service, thanks!</item>', SENTIMENT, max_tokens=3),  # cut: max_tokens
    _params("no item tag at all", SENTIMENT),  # an anonymous record
    _params('<item id="a4">Parcel late &amp; damaged</item>', NESTED, system=BIG_SYSTEM),
])
def test_answer_single_gives_what_prepare_and_complete_give(params):
    general, single = State(EmulatorConfig()), State(EmulatorConfig())
    for _ in range(2):  # the second time the prompt cache is read
        prep = general.engine.prepare(params)
        answer, usage = general.engine.complete(prep, "batch")
        expected = (prep.model, answer.text, answer.stop_reason, usage, prep.ids, answer.answered_ids)
        is_pack, items = prompts.parse_items(prompts.user_text(params))
        assert not is_pack and len(items) == 1
        assert single.engine.answer_single(params, items[0], "batch") == expected
    assert single.cache.entries.keys() == general.cache.entries.keys()


def test_the_last_call_hit_needs_the_same_objects():
    calls = []
    memo = IdentityMemo(lambda value: calls.append(value) or repr(value))
    assert memo(1) == "1" and memo(True) == "True" and memo(1.0) == "1.0"
    big = 10 ** 30
    assert memo(big) == memo(big) == repr(big)
    assert memo(10 ** 30) == repr(big)  # an equal scalar: found by value
    assert len(calls) == 4
