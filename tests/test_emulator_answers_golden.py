"""The emulator's answers are pinned: a faster generator must give the same bytes.

Answers are deterministic (seeded by content and schema path), and tests,
benchmarks and ledgers of earlier runs rely on them, so any restructuring of
emulator/answers.py (and of prompts, rng, schemagen and packs, split out of
it) is checked here against digests computed with the code before it
(commit 6bafe60) on a few hundred generated records.
"""
from __future__ import annotations

import hashlib

import anthropic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import datagen
from emulator import answers, prompts
from transforms.prompts import packing

RECORDS = list(datagen.generate_records(300, seed=7))

#: The sample task's schema as the SDK sends it (bounds moved into descriptions).
SENTIMENT = anthropic.transform_schema({
    "type": "object", "additionalProperties": False, "required": ["sentiment", "score", "reason"],
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative", "mixed"]},
        "score": {"type": "number", "minimum": -1, "maximum": 1},
        "reason": {"type": "string", "maxLength": 200}}})

#: Every kind of node the generator knows.
BROAD = {
    "type": "object",
    "properties": {
        "summary": {"type": "string", "minLength": 5, "maxLength": 60},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "step": {"type": "number", "multipleOf": 0.25, "maximum": 3},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
        "even": {"type": "integer", "multipleOf": 2},
        "urgent": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "minItems": 1,
                 "maxItems": 3, "uniqueItems": True},
        "note": {"type": ["string", "null"]},
        "when": {"type": "string", "format": "date"},
        "at": {"type": "string", "format": "date-time"},
        "time": {"type": "string", "format": "time"},
        "mail": {"type": "string", "format": "email"},
        "link": {"type": "string", "format": "uri"},
        "uid": {"type": "string", "format": "uuid"},
        "either": {"anyOf": [{"type": "integer"}, {"$ref": "#/$defs/place"}]},
        "fixed": {"const": "x"},
        "place": {"$ref": "#/$defs/place"},
    },
    "required": ["summary", "missing"],
    "$defs": {"place": {"type": "object", "properties": {"city": {"type": "string"},
                                                          "zip": {"type": "string", "maxLength": 5}}}},
}

#: sha256 of every answer below, computed with the generator of commit 6bafe60.
GOLDEN = {
    "single-none": "9cc0eeabd41a9d3f1d88e87def48f4f185fa9c2fc650dc99089d18a988fe7b24",
    "single-sentiment": "9a97a7e8836fd0ce7f2abf05fdbc05555ca5c3ef05e8c7b7881ffbc75fd338af",
    "single-broad": "fb7ec3359c70dc4fbf453dd043c2281fc23323760966116229254de328f80f22",
    "pack-none": "24e58502098d83c379b7db9ae4f0cec0fbe9d1c7e54caec248b7079cc13a2db7",
    "pack-sentiment": "da9bf0af911a567e69f55acb4ec4a7f24bc17629137a693392808a58d35e0a51",
    "pack-broad": "4a9bd6eedb38e8c3e7d78099a755de7374e77821fcea888fce0c360d8c6998f5",
}


def _content(record) -> str:
    return f"Channel: {record['channel']}\nSubject: {record['subject']}\n\n{record['text']}"


def _params(text: str, schema) -> dict:
    params = {"model": "m", "max_tokens": 4000, "messages": [{"role": "user", "content": text}]}
    if schema is not None:
        params["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    return params


def _digest(answered) -> str:
    h = hashlib.sha256()
    for a in answered:
        h.update(f"{a.text}\x00{a.stop_reason}\x00{a.output_tokens}\x00{a.answered_ids}\n".encode(
            "utf-8", "surrogatepass"))
    return h.hexdigest()


def _single_answers(schema):
    out = []
    for r in RECORDS:
        params = _params(packing.render_item(r["id"], _content(r)), schema)
        is_pack, items = prompts.parse_items(prompts.user_text(params))
        out.append(answers.build_answer(params, is_pack, items))
    return out


def _pack_answers(schema):
    out = []
    for start in range(0, len(RECORDS), 10):
        chunk = RECORDS[start:start + 10]
        text = packing.render_pack([(r["id"], _content(r)) for r in chunk])
        params = _params(text, packing.pack_schema(schema))
        is_pack, items = prompts.parse_items(prompts.user_text(params))
        out.append(answers.build_answer(params, is_pack, items))
    return out


@pytest.mark.parametrize("name,build,schema", [
    ("single-none", _single_answers, None), ("single-sentiment", _single_answers, SENTIMENT),
    ("single-broad", _single_answers, BROAD), ("pack-none", _pack_answers, None),
    ("pack-sentiment", _pack_answers, SENTIMENT), ("pack-broad", _pack_answers, BROAD)])
def test_answers_match_the_previous_generator(name, build, schema):
    assert _digest(build(schema)) == GOLDEN[name]


_PUNCT_TEXT = st.text(alphabet=st.sampled_from([chr(k) for k in prompts._PUNCT_TO_SPACE] + list("ab é\t\n\u3000\u2028\x1c")))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), _PUNCT_TEXT, st.text(max_size=400)))
def test_content_words_equals_its_definition(text):
    expected = text[:240].translate(prompts._PUNCT_TO_SPACE).split()[:30]
    assert prompts.content_words(text) == expected
