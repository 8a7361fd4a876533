"""Tests for transforms.prompts.answers: parsing, validation, id matching, re-asks."""
import copy
import json

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.prompts import answers
from transforms.prompts.answers import (
    MAX_MESSAGE_CHARS,
    PackOutcome,
    SingleOutcome,
    output_validator,
    parse_pack_answer,
    parse_single_answer,
    reask_plan,
)
from transforms.records import Reason

FAST = settings(max_examples=150, deadline=None)

LABEL = {
    "type": "object",
    "properties": {"label": {"enum": ["pos", "neg"]}, "score": {"type": "number"}},
    "required": ["label"],
    "additionalProperties": False,
}
R = Reason


def _pack(*objects, wrap=True):
    return json.dumps({"results": list(objects)} if wrap else list(objects))


# --- single answers ---------------------------------------------------------

@pytest.mark.parametrize("text, stop_reason, schema, expected", [
    ('{"label": "pos"}', "end_turn", LABEL, SingleOutcome.success({"label": "pos"})),
    ('  \n{"label": "neg", "score": 0.5}\n ', "end_turn", LABEL, SingleOutcome.success({"label": "neg", "score": 0.5})),
    ('```json\n{"label": "pos"}\n```', "end_turn", LABEL, SingleOutcome.success({"label": "pos"})),
    ('```\n{"label": "pos"}\n```\n', "stop_sequence", LABEL, SingleOutcome.success({"label": "pos"})),
    ('```{"label": "pos"}```', None, LABEL, SingleOutcome.success({"label": "pos"})),
    ("free text answer\n", "end_turn", None, SingleOutcome.success("free text answer\n")),
    ('{"not": "parsed"}', "end_turn", None, SingleOutcome.success('{"not": "parsed"}')),
])
def test_single_answers_that_are_trusted(text, stop_reason, schema, expected):
    outcome = parse_single_answer(text, stop_reason, schema)
    assert outcome == expected and outcome.ok


@pytest.mark.parametrize("text, stop_reason, schema, reason", [
    ('{"label": "pos"}', "max_tokens", LABEL, R.MAX_TOKENS),  # parses, still cut off
    ('{"label": "po', "max_tokens", LABEL, R.MAX_TOKENS),
    ("complete looking text", "max_tokens", None, R.MAX_TOKENS),
    ('{"label": "pos"}', "model_context_window_exceeded", LABEL, R.MAX_TOKENS),
    ("I can't help with that.", "refusal", LABEL, R.REFUSAL),
    ("I can't help with that.", "refusal", None, R.REFUSAL),
    ("Sure! The label is pos.", "end_turn", LABEL, R.INVALID_JSON),
    ("", "end_turn", LABEL, R.INVALID_JSON),
    ('{"label": "pos", "score": NaN}', "end_turn", LABEL, R.INVALID_JSON),
    ('{"label": "pos", "label": "neg"}', "end_turn", LABEL, R.INVALID_JSON),
    ("[" * 100_000, "end_turn", LABEL, R.INVALID_JSON),
    ('{"label": "maybe"}', "end_turn", LABEL, R.SCHEMA_INVALID),
    ('{"label": "pos", "extra": 1}', "end_turn", LABEL, R.SCHEMA_INVALID),
    ('["pos"]', "end_turn", LABEL, R.SCHEMA_INVALID),
    (" \n ", "end_turn", None, R.MISSING_RESULT),
])
def test_single_answers_that_are_not_trusted(text, stop_reason, schema, reason):
    outcome = parse_single_answer(text, stop_reason, schema)
    assert not outcome.ok and outcome.output is None
    assert outcome.reason is reason and outcome.message


def test_schema_messages_are_short_and_keep_where_and_what():
    outcome = parse_single_answer(json.dumps({"label": "x" * 5000}), "end_turn", LABEL)
    assert outcome.reason is R.SCHEMA_INVALID
    assert len(outcome.message) <= MAX_MESSAGE_CHARS < 300
    assert outcome.message.startswith("$.label: ")
    assert outcome.message.endswith("is not one of ['pos', 'neg']")


def test_validators_are_compiled_once_per_distinct_schema():
    assert output_validator(LABEL) is output_validator(copy.deepcopy(LABEL))
    assert output_validator(LABEL) is not output_validator({**LABEL, "required": []})


def test_an_invalid_schema_fails_loudly_not_per_record():
    with pytest.raises(jsonschema.SchemaError):
        output_validator({"type": "object", "properties": {"a": {"type": "nonsense"}}})


# --- pack answers -----------------------------------------------------------

IDS = ["a", "b", "c"]


def _outcome(**fields):
    return PackOutcome(expected=tuple(fields.pop("expected", IDS)), **fields)


@pytest.mark.parametrize("text, expected", [
    pytest.param(
        _pack({"n": 1, "label": "pos"}, {"n": 2, "label": "neg"}, {"n": 3, "label": "pos", "score": 1}),
        _outcome(valid={"a": {"label": "pos"}, "b": {"label": "neg"}, "c": {"label": "pos", "score": 1}}),
        id="all-valid"),
    pytest.param(
        _pack({"n": 3, "label": "pos"}, {"n": 2, "label": "neg"}, {"n": 1, "label": "neg"}, wrap=False),
        _outcome(valid={"a": {"label": "neg"}, "b": {"label": "neg"}, "c": {"label": "pos"}}),
        id="bare-array-reversed: matched by key, not position"),
    pytest.param(
        "```json\n" + _pack({"n": 1, "label": "pos"}, {"n": 2, "label": "pos"}, {"n": 3, "label": "pos"}) + "\n```",
        _outcome(valid={"a": {"label": "pos"}, "b": {"label": "pos"}, "c": {"label": "pos"}}),
        id="fenced"),
    pytest.param(
        _pack({"n": 1, "label": "pos"}, {"n": 3, "label": "neg"}),
        _outcome(valid={"a": {"label": "pos"}, "c": {"label": "neg"}}, missing=("b",)),
        id="missing"),
    pytest.param(
        _pack({"n": 1, "label": "pos"}, {"n": 2, "label": "neg"}, {"n": 2, "label": "neg"}, {"n": 3, "label": "pos"}),
        _outcome(valid={"a": {"label": "pos"}, "c": {"label": "pos"}}, duplicated=("b",)),
        id="duplicated copies agree: still not trusted"),
    pytest.param(
        _pack({"n": 1, "label": "pos"}, {"n": 2, "label": "neg"}, {"n": 3, "label": "pos"},
              {"n": 4, "label": "pos"}, {"n": 0, "label": "neg"}, {"n": -1, "label": "neg"}),
        _outcome(valid={"a": {"label": "pos"}, "b": {"label": "neg"}, "c": {"label": "pos"}},
                 invented=("4", "0", "-1")),
        id="invented: keys outside 1..n"),
    pytest.param(
        _pack({"n": 1, "label": "maybe"}, {"n": 2, "label": "neg"}, {"n": 3}),
        _outcome(valid={"b": {"label": "neg"}},
                 invalid={"a": (R.SCHEMA_INVALID, "$.label: 'maybe' is not one of ['pos', 'neg']"),
                          "c": (R.SCHEMA_INVALID, "$: 'label' is a required property")}),
        id="schema-invalid items"),
    pytest.param(
        _pack({"label": "pos"}, "a", {"n": "2", "label": "pos"}, {"n": True, "label": "pos"},
              {"n": 2.0, "label": "pos"}, {"id": "c", "label": "pos"}, {"n": 1, "label": "pos"}),
        _outcome(valid={"a": {"label": "pos"}}, missing=("b", "c"), unattributed=6),
        id="objects without an integer key (the record id is no key)"),
])
def test_pack_answers(text, expected):
    assert parse_pack_answer(text, "end_turn", IDS, LABEL) == expected


@pytest.mark.parametrize("text, stop_reason, reason", [
    (_pack({"n": 1, "label": "pos"}, {"n": 2, "label": "pos"}, {"n": 3, "label": "pos"}), "max_tokens", R.MAX_TOKENS),
    ('{"results": [{"n": 1, "label": "pos"}, {"n": 2, "la', "max_tokens", R.MAX_TOKENS),
    ("I won't process these.", "refusal", R.REFUSAL),
    ("Here you go: a=pos", "end_turn", R.INVALID_JSON),
    ('{"results": [{"n": 1, "n": 2, "label": "pos"}]}', "end_turn", R.INVALID_JSON),
    ('{"answers": []}', "end_turn", R.SCHEMA_INVALID),
    ('{"n": 1, "label": "pos"}', "end_turn", R.SCHEMA_INVALID),
    ('"a"', "end_turn", R.SCHEMA_INVALID),
])
def test_pack_answers_of_which_nothing_is_trusted(text, stop_reason, reason):
    outcome = parse_pack_answer(text, stop_reason, IDS, LABEL)
    assert outcome.error[0] is reason and outcome.error[1]
    assert outcome.truncated is (reason is R.MAX_TOKENS)
    assert not outcome.valid and outcome.retry_ids == tuple(IDS)
    assert outcome.failures() == {i: outcome.error for i in IDS}


def test_keys_follow_the_order_the_pack_was_rendered_in():
    """Key n names the n-th expected id, whatever the ids look like."""
    ids = ['say "x"', "a&b", "3", "1"]
    text = _pack({"n": 4, "label": "pos"}, {"n": 3, "label": "neg"}, {"n": 1, "label": "neg"})
    outcome = parse_pack_answer(text, "end_turn", ids, LABEL)
    assert outcome.valid == {"1": {"label": "pos"}, "3": {"label": "neg"}, 'say "x"': {"label": "neg"}}
    assert outcome.missing == ("a&b",)


@pytest.mark.parametrize("obj, valid, invalid", [
    ({"n": 1, "output": "text"}, {"a": "text"}, {}),
    ({"n": 1, "output": 5}, {}, {"a": R.SCHEMA_INVALID}),
    ({"n": 1, "output": "  "}, {}, {"a": R.MISSING_RESULT}),
])
def test_pack_answer_without_task_schema_outputs_the_text(obj, valid, invalid):
    outcome = parse_pack_answer(_pack(obj), "end_turn", ["a"], None)
    assert outcome.valid == valid
    assert {i: reason for i, (reason, _) in outcome.invalid.items()} == invalid


@pytest.mark.parametrize("expected_ids", [[], ["a", "a"]])
def test_pack_answer_refuses_unmatchable_expected_ids(expected_ids):
    with pytest.raises(ValueError):
        parse_pack_answer("[]", "end_turn", expected_ids, LABEL)


def test_failures_give_every_failed_id_a_reason_in_pack_order():
    text = _pack({"n": 4, "label": "maybe"}, {"n": 2, "label": "pos"}, {"n": 2, "label": "pos"})
    outcome = parse_pack_answer(text, "end_turn", ["d", "c", "b", "a"], LABEL)
    assert outcome.retry_ids == ("d", "c", "b", "a")
    assert {i: r for i, (r, _) in outcome.failures().items()} == {
        "d": R.MISSING_IN_PACK, "c": R.DUPLICATED_IN_PACK, "b": R.MISSING_IN_PACK, "a": R.SCHEMA_INVALID}
    assert list(outcome.failures()) == ["d", "c", "b", "a"]


FATES = ["valid", "invalid", "missing", "duplicated"]


@FAST
@given(data=st.data(), ids=st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=10, unique=True))
def test_every_expected_id_lands_in_exactly_the_right_place(data, ids):
    fates = {i: data.draw(st.sampled_from(FATES), label=f"fate of {i!r}") for i in ids}
    invented = data.draw(st.lists(st.integers(-5, 30).filter(lambda k: not 1 <= k <= len(ids)), max_size=3))
    objects = [{"n": k, "label": "pos"} for k in invented]
    for n, i in enumerate(ids, start=1):
        fate = fates[i]
        label = "maybe" if fate == "invalid" else ("pos" if len(i) % 2 else "neg")
        objects += [{"n": n, "label": label}] * (2 if fate == "duplicated" else 0 if fate == "missing" else 1)
    objects = data.draw(st.permutations(objects), label="answer order")

    outcome = parse_pack_answer(_pack(*objects), "end_turn", ids, LABEL)

    assert outcome.valid == {i: {"label": "pos" if len(i) % 2 else "neg"} for i in ids if fates[i] == "valid"}
    assert set(outcome.invalid) == {i for i in ids if fates[i] == "invalid"}
    assert outcome.missing == tuple(i for i in ids if fates[i] == "missing")
    assert outcome.duplicated == tuple(i for i in ids if fates[i] == "duplicated")
    assert sorted(outcome.invented) == sorted(str(k) for k in invented)
    assert outcome.retry_ids == tuple(i for i in ids if fates[i] != "valid")
    assert set(outcome.failures()) | set(outcome.valid) == set(ids)
    assert not set(outcome.failures()) & set(outcome.valid)


# --- the re-ask ladder ------------------------------------------------------

@pytest.mark.parametrize("failed, attempt, max_reasks, expected", [
    (list("abcde"), 1, 2, [list("abc"), list("de")]),
    (["a"], 1, 2, [["a"]]),
    (list("abc"), 2, 2, [["a"], ["b"], ["c"]]),
    (list("ab"), 3, 3, [["a"], ["b"]]),
    (list("ab"), 3, 2, None),
    (list("ab"), 1, 0, None),
    ([], 5, 2, []),
])
def test_reask_plan(failed, attempt, max_reasks, expected):
    assert reask_plan(failed, attempt, max_reasks) == expected


def test_reask_attempts_start_at_one():
    with pytest.raises(ValueError):
        reask_plan(["a"], 0)


def test_default_ladder_is_halves_then_singles_then_dead_letter():
    assert [reask_plan(list("abcd"), n) for n in (1, 2, 3)] == [
        [["a", "b"], ["c", "d"]], [["a"], ["b"], ["c"], ["d"]], None]


def test_public_names_exist():
    for name in answers.__all__:
        assert hasattr(answers, name), name


# --- the compiled fast check ------------------------------------------------

SENTIMENT = {
    "type": "object", "additionalProperties": False, "required": ["sentiment", "score", "reason"],
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative", "mixed"], "description": "d"},
        "score": {"type": "number", "minimum": -1, "maximum": 1},
        "reason": {"type": "string", "maxLength": 20},
        "tags": {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 2},
        "n": {"type": ["integer", "null"], "exclusiveMinimum": 0, "exclusiveMaximum": 10},
    },
}

_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-20, 20) | st.floats(-2, 12, allow_nan=False)
    | st.sampled_from([1.0, 0.0, -1.0, 10.0]) | st.text(max_size=25)
    | st.sampled_from(["positive", "neutral", "mixed", "negative", "", "x"]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["sentiment", "score", "reason", "tags", "n", "id", "other"]),
                      children, max_size=6),
    max_leaves=12)


@FAST
@given(_JSON_VALUES)
def test_fast_check_agrees_with_jsonschema(instance):
    """The fast check says valid exactly when jsonschema does (for this subset)."""
    fast = answers.compile_fast_check(SENTIMENT)
    assert fast is not None
    assert fast(instance) == jsonschema.Draft202012Validator(SENTIMENT).is_valid(instance)


@FAST
@given(st.fixed_dictionaries({
    "sentiment": st.sampled_from(["positive", "negative", "maybe", 3]),
    "score": st.one_of(st.floats(-1.5, 1.5, allow_nan=False), st.integers(-2, 2), st.booleans()),
    "reason": st.text(max_size=25)}, optional={"n": st.one_of(st.none(), st.integers(-1, 11), st.floats(0, 11)),
                                               "other": st.just(1)}))
def test_fast_check_agrees_on_answer_shaped_objects(instance):
    fast = answers.compile_fast_check(SENTIMENT)
    assert fast(instance) == jsonschema.Draft202012Validator(SENTIMENT).is_valid(instance)


#: Keywords with and without a `type` that implies their own type test (which
#: the fast check then leaves out), the type written last, and untyped ones.
_TYPED_AND_UNTYPED = [
    {"maxLength": 3, "minimum": 0, "required": ["a"], "maxItems": 1, "items": {"exclusiveMaximum": 2}},
    {"maximum": 5, "minLength": 1, "type": "integer", "exclusiveMinimum": -3},
    {"minItems": 1, "items": {"type": "number", "minimum": 0}, "type": "array"},
    {"required": ["a", "b"], "type": "object", "additionalProperties": {"type": "string", "maxLength": 2}},
    {"type": ["string", "number"], "minLength": 2, "maximum": 3},
    {"properties": {"a": {"type": "boolean"}}, "required": ["a"]},
    {"type": "null"},
]


@FAST
@given(_JSON_VALUES.map(lambda v: {"a": v, "b": v} if isinstance(v, list) else v) | _JSON_VALUES)
@pytest.mark.parametrize("schema", _TYPED_AND_UNTYPED)
def test_fast_check_agrees_with_jsonschema_with_or_without_a_type(schema, instance):
    fast = answers.compile_fast_check(schema)
    assert fast is not None
    assert fast(instance) == jsonschema.Draft202012Validator(schema).is_valid(instance)


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"a": {"pattern": "^x"}}},
    {"anyOf": [{"type": "string"}, {"type": "null"}]},
    {"$ref": "#/$defs/a", "$defs": {"a": {"type": "string"}}},
    {"enum": [1, True]},
    {"const": "x"},
    {"type": "array", "items": [{"type": "string"}]},
    {"$schema": "http://json-schema.org/draft-04/schema#", "type": "number", "exclusiveMinimum": True},
    {"type": "object", "patternProperties": {"^a": {"type": "string"}}},
])
def test_fast_check_declines_schemas_outside_its_subset(schema):
    assert answers.compile_fast_check(schema) is None


def test_answers_outside_the_fast_subset_are_still_validated_by_jsonschema():
    schema = {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}$"}},
              "required": ["code"]}
    assert parse_single_answer('{"code": "ABC"}', "end_turn", schema).ok
    bad = parse_single_answer('{"code": "abc"}', "end_turn", schema)
    assert bad.reason is R.SCHEMA_INVALID and "does not match" in bad.message


def test_an_invalid_answer_still_gets_jsonschemas_message():
    outcome = parse_single_answer('{"label": "maybe"}', "end_turn", LABEL)
    assert outcome.reason is R.SCHEMA_INVALID
    assert outcome.message.startswith("$.label: 'maybe' is not one of")
