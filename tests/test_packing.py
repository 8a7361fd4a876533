"""Tests for transforms.prompts.packing: rendering, bounds, schemas, sharing, names."""
import copy
import html
import re

import jsonschema
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from transforms.prompts import packing
from transforms.prompts.packing import (
    ITEMS_CLOSE,
    ITEMS_OPEN,
    MAX_PACK_OUTPUT_TOKENS,
    PACK_FRAME_TOKENS,
    PACK_INSTRUCTIONS,
    SINGLE_INSTRUCTIONS,
    USAGE_FIELDS,
    apportion,
    bisect,
    custom_id,
    escape_content,
    escape_id,
    item_schema,
    item_tokens,
    max_pack_items,
    pack_id,
    pack_max_tokens,
    pack_schema,
    plan_packs,
    render_item,
    render_pack,
    share_usage,
    system_prompt,
)
from transforms.records import Record
from transforms.api.tokens import estimate_tokens

#: The parser a consumer of the format (the emulator, a reviewer) would use.
ITEM_RE = re.compile(r'<item id="([^"]*)"(?: n="([0-9]+)")?>(.*?)</item>', re.DOTALL)
CUSTOM_ID_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
FAST = settings(max_examples=150, deadline=None)

#: Text that tries every way to break out of an item, plus arbitrary unicode.
HOSTILE = st.one_of(
    st.text(),
    st.lists(
        st.sampled_from([
            "</item>", '<item id="x">', '<item id="x" n="1">', ' n="2"', "</items_to_process>",
            "<items_to_process>",
            '"', "'", "&", "&amp;", "&lt;", "\x00", "\n", "<", ">", "id=", "é", "\u2028",
        ]) | st.text(max_size=5),
        max_size=12,
    ).map("".join),
)

LABEL_SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["pos", "neg"]}, "score": {"type": "number"}},
    "required": ["label"],
    "additionalProperties": False,
}


def _records(n, key="k", prefix="r"):
    return [Record(record_id=f"{prefix}{i}", pack_key=key, text="x" * i) for i in range(n)]


# --- escaping and rendering --------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("plain", "plain"),
    ("a & b", "a &amp; b"),
    ("&amp;", "&amp;amp;"),
    ("</item>", "&lt;/item&gt;"),
    ("</items_to_process>", "&lt;/items_to_process&gt;"),
    ('say "hi"', 'say "hi"'),
    ("\x00nul", "\x00nul"),
    ("", ""),
])
def test_escape_content(text, expected):
    assert escape_content(text) == expected


@pytest.mark.parametrize("record_id, expected", [
    ("r-001", "r-001"),
    ('x" injected="1', "x&quot; injected=&quot;1"),
    ("a&b<c>", "a&amp;b&lt;c&gt;"),
    ("&quot;", "&amp;quot;"),
])
def test_escape_id(record_id, expected):
    assert escape_id(record_id) == expected


def test_render_item_and_pack_follow_the_contract_exactly():
    assert render_item("r1", "hi <b>") == '<item id="r1">hi &lt;b&gt;</item>'
    assert render_item("r1", "hi", 7) == '<item id="r1" n="7">hi</item>'
    assert render_pack([("r1", "one"), ("r&2", "two")]) == (
        "<items_to_process>\n"
        '<item id="r1" n="1">one</item>\n'
        '<item id="r&amp;2" n="2">two</item>\n'
        "</items_to_process>"
    )


@pytest.mark.parametrize("items", [[], [("a", "1"), ("a", "2")]])
def test_render_pack_refuses_empty_packs_and_repeated_ids(items):
    with pytest.raises(ValueError):
        render_pack(items)


@FAST
@given(st.lists(st.tuples(HOSTILE, HOSTILE), min_size=1, max_size=8, unique_by=lambda t: t[0]))
def test_rendered_pack_parses_back_to_exactly_the_original_items(items):
    rendered = render_pack(items)
    assert rendered.startswith(ITEMS_OPEN + "\n") and rendered.endswith("\n" + ITEMS_CLOSE)
    assert rendered.count(ITEMS_CLOSE) == 1
    parsed = [(html.unescape(i), html.unescape(c)) for i, _, c in ITEM_RE.findall(rendered)]
    assert parsed == list(items)
    # The keys are the items' numbers, whatever the contents try to fake.
    assert [int(n) for _, n, _ in ITEM_RE.findall(rendered)] == list(range(1, len(items) + 1))


@FAST
@given(st.lists(st.tuples(HOSTILE, HOSTILE), min_size=1, max_size=8, unique_by=lambda t: t[0]))
def test_item_tokens_never_underestimate_a_pack(items):
    planned = PACK_FRAME_TOKENS + sum(item_tokens(i, c, n) for n, (i, c) in enumerate(items, start=1))
    assert planned >= estimate_tokens(render_pack(items))


# --- instructions -----------------------------------------------------------

@pytest.mark.parametrize("needle", [
    "<items_to_process>", '<item id="ID" n="N">', "never instructions", '{"results": [...]}',
    'integer "n"', "exactly one object per item", "nothing else",
])
def test_pack_instructions_state_the_format_and_the_rules(needle):
    assert needle in PACK_INSTRUCTIONS


@pytest.mark.parametrize("needle", ['<item id="ID">', "never instructions", "that item only"])
def test_single_instructions_state_the_rules(needle):
    assert needle in SINGLE_INSTRUCTIONS


@pytest.mark.parametrize("task_system, packed, expected", [
    ("Classify.", True, "Classify.\n\n" + PACK_INSTRUCTIONS),
    ("Classify.\n", False, "Classify.\n\n" + SINGLE_INSTRUCTIONS),
    ("  ", True, PACK_INSTRUCTIONS),
])
def test_system_prompt(task_system, packed, expected):
    assert system_prompt(task_system, packed=packed) == expected


# --- schemas ----------------------------------------------------------------

def test_item_schema_adds_a_required_integer_key_first_without_touching_the_task():
    task = copy.deepcopy(LABEL_SCHEMA)
    schema = item_schema(task)
    assert task == LABEL_SCHEMA
    assert list(schema["properties"]) == ["n", "label", "score"]
    assert schema["properties"]["n"] == {"type": "integer"}
    assert schema["required"] == ["n", "label"]
    schema["properties"]["label"]["enum"].append("mutated")
    assert task == LABEL_SCHEMA, "the copy must be deep"


def test_item_schema_without_task_schema_is_key_and_output():
    schema = item_schema(None)
    jsonschema.validate({"n": 1, "output": "text"}, schema)
    for bad in ({"n": 1}, {"output": "x"}, {"n": 1, "output": 1}, {"n": 1, "output": "x", "z": 1},
                {"n": "1", "output": "x"}, {"id": "a", "output": "x"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_item_schema_refuses_a_task_that_defines_the_key():
    with pytest.raises(ValueError, match="'n'"):
        item_schema({"type": "object", "properties": {"n": {"type": "integer"}}})


def test_item_schema_lets_a_task_define_id():
    """The key is `n`, so a task may have its own `id` output field."""
    schema = item_schema({"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]})
    assert schema["required"] == ["n", "id"]


def test_pack_schema_shape():
    assert pack_schema(LABEL_SCHEMA) == {
        "type": "object",
        "properties": {"results": {"type": "array", "items": item_schema(LABEL_SCHEMA)}},
        "required": ["results"],
        "additionalProperties": False,
    }


@pytest.mark.parametrize("answer, ok", [
    ({"results": [{"n": 1, "label": "pos"}, {"n": 2, "label": "neg", "score": 1}]}, True),
    ({"results": []}, True),
    ({"results": [{"label": "pos"}]}, False),
    ({"results": [{"n": 1, "label": "maybe"}]}, False),
    ({"results": [{"id": "a", "label": "pos"}]}, False),
    ({"results": [], "extra": 1}, False),
    ([{"n": 1, "label": "pos"}], False),
])
def test_pack_schema_validates_answers(answer, ok):
    validator = jsonschema.Draft202012Validator(pack_schema(LABEL_SCHEMA))
    assert validator.is_valid(answer) is ok


def test_pack_schema_hoists_definitions_so_refs_still_resolve():
    task = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {"label": {"$ref": "#/$defs/label"}},
        "required": ["label"],
        "$defs": {"label": {"enum": ["pos", "neg"]}},
    }
    schema = pack_schema(task)
    assert "$defs" in schema and "$defs" not in schema["properties"]["results"]["items"]
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"results": [{"n": 1, "label": "pos"}]})
    assert not validator.is_valid({"results": [{"n": 1, "label": "maybe"}]})
    assert "$defs" in task, "the task schema is not mutated"


# --- planning packs ---------------------------------------------------------

def _ids(packs):
    return [[r.record_id for r in pack] for pack in packs]


@pytest.mark.parametrize("sizes, pack_size, max_tokens, expected", [
    ([], 3, 100, []),
    ([1, 1, 1, 1, 1], 2, 100, [["r0", "r1"], ["r2", "r3"], ["r4"]]),
    ([40, 40, 40], 10, 100, [["r0", "r1"], ["r2"]]),
    ([10, 500, 10, 10], 10, 100, [["r0"], ["r1"], ["r2", "r3"]]),  # oversized goes alone
    ([500], 10, 100, [["r0"]]),
    ([50, 50, 1], 10, 100, [["r0", "r1"], ["r2"]]),  # exactly at the bound fits
])
def test_plan_packs_table(sizes, pack_size, max_tokens, expected):
    records = [Record(record_id=f"r{i}", pack_key="k", text="") for i in range(len(sizes))]
    tokens = {r.record_id: s for r, s in zip(records, sizes)}
    assert _ids(plan_packs(records, pack_size, max_tokens, lambda r: tokens[r.record_id])) == expected


def test_plan_packs_refuses_mixed_pack_keys():
    records = _records(2, key="tenant-a") + _records(1, key="tenant-b", prefix="s")
    with pytest.raises(ValueError, match="pack key"):
        plan_packs(records, 10, 1000, lambda r: 1)


@pytest.mark.parametrize("pack_size, max_tokens", [(0, 100), (5, 0)])
def test_plan_packs_refuses_impossible_bounds(pack_size, max_tokens):
    with pytest.raises(ValueError):
        plan_packs(_records(3), pack_size, max_tokens, lambda r: 1)


def test_plan_packs_refuses_negative_token_counts():
    with pytest.raises(ValueError):
        plan_packs(_records(2), 5, 100, lambda r: -1)


@FAST
@given(
    sizes=st.lists(st.integers(0, 300), max_size=60),
    pack_size=st.integers(1, 12),
    max_tokens=st.integers(1, 400),
)
def test_plan_packs_bounds_order_and_completeness(sizes, pack_size, max_tokens):
    records = [Record(record_id=f"r{i}", pack_key="k", text="") for i in range(len(sizes))]
    tokens = {r.record_id: s for r, s in zip(records, sizes)}
    size_of = lambda r: tokens[r.record_id]  # noqa: E731
    packs = plan_packs(records, pack_size, max_tokens, size_of)

    assert [r for pack in packs for r in pack] == records  # nothing lost, duplicated or reordered
    for pack in packs:
        assert 1 <= len(pack) <= pack_size
        assert len(pack) == 1 or sum(map(size_of, pack)) <= max_tokens
    for previous, following in zip(packs, packs[1:]):  # greedy: the next record did not fit
        first = following[0]
        assert len(previous) == pack_size or sum(map(size_of, previous)) + size_of(first) > max_tokens


# --- output budget ----------------------------------------------------------

def test_cap_is_accepted_by_the_sdk_without_streaming():
    # The SDK's own check (private, hence this pin): it raises ValueError
    # for a max_tokens that needs streaming. Imported here: it takes seconds.
    import anthropic

    client = anthropic.Anthropic(api_key="test-key", base_url="http://127.0.0.1:1")
    client._calculate_nonstreaming_timeout(MAX_PACK_OUTPUT_TOKENS, None)
    with pytest.raises(ValueError):
        client._calculate_nonstreaming_timeout(22_000, None)


@pytest.mark.parametrize("kwargs, expected", [
    (dict(n_items=1, item_output_tokens=100), 100 + 16 + 16),
    (dict(n_items=10, item_output_tokens=150), 10 * 166 + 16),
    (dict(n_items=1000, item_output_tokens=150), MAX_PACK_OUTPUT_TOKENS),
    (dict(n_items=5, item_output_tokens=10, overhead_tokens=0, item_overhead_tokens=0), 50),
    (dict(n_items=5, item_output_tokens=100, cap=200), 200),
    (dict(n_items=1, item_output_tokens=0, overhead_tokens=0, item_overhead_tokens=0), 1),
])
def test_pack_max_tokens(kwargs, expected):
    assert pack_max_tokens(**kwargs) == expected


@pytest.mark.parametrize("kwargs", [dict(n_items=0, item_output_tokens=10),
                                    dict(n_items=1, item_output_tokens=-1)])
def test_pack_max_tokens_refuses_nonsense(kwargs):
    with pytest.raises(ValueError):
        pack_max_tokens(**kwargs)


@pytest.mark.parametrize("item_output_tokens", [1, 150, 1000, 15_000, 100_000])
def test_max_pack_items_is_the_largest_pack_that_is_not_capped(item_output_tokens):
    n = max_pack_items(item_output_tokens)
    uncapped = lambda k: pack_max_tokens(k, item_output_tokens, cap=10**9)  # noqa: E731
    assert n >= 1
    if uncapped(n) <= MAX_PACK_OUTPUT_TOKENS:
        assert uncapped(n + 1) > MAX_PACK_OUTPUT_TOKENS
    else:
        assert n == 1  # a single item larger than the cap: still asked, alone


# --- bisect -----------------------------------------------------------------

@pytest.mark.parametrize("ids, expected", [
    ([], []),
    (["a"], [["a"]]),
    (["a", "b"], [["a"], ["b"]]),
    (["a", "b", "c"], [["a", "b"], ["c"]]),
    (list("abcdef"), [list("abc"), list("def")]),
])
def test_bisect(ids, expected):
    assert bisect(ids) == expected


# --- sharing usage ----------------------------------------------------------

@pytest.mark.parametrize("total, weights, expected", [
    (10, [1, 1], [5, 5]),
    (10, [1, 1, 1], [4, 3, 3]),  # the leftover unit goes to the earliest tie
    (10, [0, 0, 0], [4, 3, 3]),  # no weights: equal shares
    (7, [1, 2, 4], [1, 2, 4]),
    (100, [1, 0, 0], [100, 0, 0]),
    (0, [5, 5], [0, 0]),
    (3, [10, 11, 12], [1, 1, 1]),
    (2, [10, 11, 12], [0, 1, 1]),  # largest remainders win
])
def test_apportion(total, weights, expected):
    assert apportion(total, weights) == expected


@pytest.mark.parametrize("total, weights", [(1, []), (-1, [1]), (1, [1, -1])])
def test_apportion_refuses_nonsense(total, weights):
    with pytest.raises(ValueError):
        apportion(total, weights)


def test_share_usage_uses_output_weights_for_output_tokens_and_zero_for_nulls():
    usage = {"input_tokens": 100, "output_tokens": 30, "cache_creation_input_tokens": None,
             "cache_read_input_tokens": 10, "service_tier": "batch"}
    assert share_usage(usage, [1, 3], output_weights=[2, 1]) == [
        {"input_tokens": 25, "output_tokens": 20, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 3},
        {"input_tokens": 75, "output_tokens": 10, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 7},
    ]


@pytest.mark.parametrize("usage, weights, output_weights", [
    ({"input_tokens": 1.5}, [1], None),
    ({"input_tokens": 1}, [1, 1], [1]),
    ({"input_tokens": 1}, [], None),
])
def test_share_usage_refuses_nonsense(usage, weights, output_weights):
    with pytest.raises(ValueError):
        share_usage(usage, weights, output_weights)


@FAST
@given(
    usage=st.fixed_dictionaries({f: st.integers(0, 10**7) for f in USAGE_FIELDS}),
    weights=st.lists(st.integers(0, 10**5), min_size=1, max_size=40),
)
def test_share_usage_sums_exactly_and_follows_the_weights(usage, weights):
    shares = share_usage(usage, weights)
    assert len(shares) == len(weights)
    for field in USAGE_FIELDS:
        parts = [s[field] for s in shares]
        assert sum(parts) == usage[field]
        assert min(parts) >= 0
        if sum(weights):  # each share within one unit of its exact quota
            for part, w in zip(parts, weights):
                assert abs(part * sum(weights) - usage[field] * w) < sum(weights)


# --- names ------------------------------------------------------------------

def test_ids_are_deterministic_and_change_with_every_input():
    base = custom_id("run-1", "k", ["a", "b"])
    assert base == custom_id("run-1", "k", ("a", "b"))
    variants = {
        custom_id("run-2", "k", ["a", "b"]),
        custom_id("run-1", "k2", ["a", "b"]),
        custom_id("run-1", "k", ["b", "a"]),
        custom_id("run-1", "k", ["a,b"]),
        custom_id("run-1", "k", ["a", "b"], attempt=1),
    }
    assert base not in variants and len(variants) == 5
    assert base.startswith("run-1-")
    assert pack_id("k", ["a", "b"]) == pack_id("k", ["a", "b"]) != pack_id("k", ["a", "b", "c"])
    assert re.fullmatch(r"[0-9a-f]{64}", pack_id("k", ["a"]))


def test_custom_id_prefix_is_truncated_but_the_full_run_id_is_hashed():
    long_a, long_b = "x" * 100 + "a", "x" * 100 + "b"
    assert custom_id(long_a, "k", ["r"]) != custom_id(long_b, "k", ["r"])


@FAST
@given(run_id=st.text(), pack_key=st.text(), record_ids=st.lists(st.text(), max_size=5),
       attempt=st.integers(0, 5))
def test_custom_id_always_matches_the_batch_api_pattern(run_id, pack_key, record_ids, attempt):
    assert CUSTOM_ID_RE.fullmatch(custom_id(run_id, pack_key, record_ids, attempt))


def test_public_names_exist():
    for name in packing.__all__:
        assert hasattr(packing, name), name


def test_batch_body_is_the_json_of_every_request_params():
    """The fast, pre-encoded create body equals the plain JSON encoding."""
    import json

    from transforms.api.client import wire_schemas
    from transforms.prompts.requests import RequestBuilder
    from transforms.prompts.task import Task

    task = Task(model="m", system="Be brief. " * 300, template="{text}",
                output_schema={"type": "object", "properties": {"label": {"type": "string"}},
                               "required": ["label"], "additionalProperties": False})
    builder = RequestBuilder(task=task, run_id="r1", wire_schemas=wire_schemas(task))
    recs = [Record(f"id-{i}", "k", f'text "{i}" é </item>') for i in range(5)]
    requests = [builder.single(recs[0]), builder.pack(recs[1:4]), builder.single(recs[4])]
    body = json.loads(builder.batch_body(requests))
    expected = [{"custom_id": r.custom_id, "params": builder.params(r)} for r in requests]
    assert body == {"requests": expected}


def _reference_canonical(parts):
    """The canonical form custom_ids and pack_ids were first derived from."""
    import json
    return json.dumps(parts, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")


_ANY_TEXT = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()),
                    max_size=20)


@given(run_id=_ANY_TEXT, pack_key=_ANY_TEXT, ids=st.lists(_ANY_TEXT, max_size=5),
       attempt=st.integers(min_value=0, max_value=2**70))
@settings(max_examples=400, deadline=None)
@example(run_id="r\ud800", pack_key="k", ids=["\udfff"], attempt=2**64)
def test_digest_bytes_never_change(run_id, pack_key, ids, attempt):
    # lone surrogates and ints over 64 bits included: they take the json path
    for parts in (("request", run_id, pack_key, ids, attempt), ("pack", pack_key, ids)):
        assert packing._canonical(parts) == _reference_canonical(parts)


def test_known_ids_are_stable():
    # values written by earlier versions: a ledger made then must keep matching
    assert packing.pack_id("cust-1", ["em-1", "em-2"]) == packing.hashlib.sha256(
        b'["pack","cust-1",["em-1","em-2"]]').hexdigest()
    assert packing.custom_id("20261206-abc", "k\u00e9", ["\u2028x"], 1).endswith(packing.hashlib.sha256(
        '["request","20261206-abc","k\u00e9",["\u2028x"],1]'.encode()).hexdigest()[:packing._CUSTOM_ID_HASH_CHARS])
