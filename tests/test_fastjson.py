"""Tests for transforms.fastjson: the JSONL splitter of the batch results stream."""
import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from transforms import fastjson
from transforms.fastjson import dumps_sorted, jsonl_lines, loads

#: Characters str.splitlines() (and so httpx's iter_lines) treats as line ends;
#: the first three may stand raw inside a JSON string.
SPLITLINES_ENDS = ["\u2028", "\u2029", "\x85", "\r", "\x0b", "\x0c", "\x1c"]


def _chunked(data: bytes, cuts):
    """data cut at the given offsets (any order, repeats allowed)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def test_a_raw_line_separator_inside_a_string_does_not_end_the_line():
    lines = [{"custom_id": "a", "text": "before\u2028after\x85end\u2029"}, {"custom_id": "b", "text": "x"}]
    data = "\n".join(json.dumps(x, ensure_ascii=False) for x in lines).encode() + b"\n"
    assert "\u2028" in data.decode()
    assert [loads(line) for line in jsonl_lines([data])] == lines


def test_blank_lines_and_a_missing_final_newline():
    assert list(jsonl_lines([b"\n", b'{"a":1}\n\n  \n{"b"', b":2}"])) == [b'{"a":1}', b'{"b":2}']
    assert list(jsonl_lines([])) == [] and list(jsonl_lines([b"", b"\n"])) == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["custom_id", "text", "n"]),
                                st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(SPLITLINES_ENDS)),
                                min_size=1), max_size=8),
       st.lists(st.integers(min_value=0), max_size=20),
       st.booleans())
def test_any_chunking_gives_back_exactly_the_objects(objects, cuts, ascii_only):
    """However the stream is cut (mid-line, mid-character), every object comes back once, in order."""
    data = b"".join(json.dumps(o, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass") + b"\n"
                    for o in objects)
    assert [loads(line) for line in jsonl_lines(_chunked(data, cuts))] == objects


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(_JSON_VALUES, st.booleans())
def test_loads_if_compact_is_a_strict_parse_or_steps_aside(value, compact):
    """Whatever the text, loads_if_compact gives the standard library's value or NOT_COMPACT."""
    from transforms.fastjson import NOT_COMPACT, loads_if_compact
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":") if compact else None)
    got = loads_if_compact(text)
    if got is not NOT_COMPACT:
        assert got == json.loads(text) and json.dumps(got) == json.dumps(json.loads(text))


def test_loads_if_compact_leaves_repeated_keys_nan_and_escapes_to_the_standard_library():
    from transforms.fastjson import NOT_COMPACT, loads_if_compact
    assert loads_if_compact('{"a":1,"b":[true,null,"é"],"c":0.52}') == {"a": 1, "b": [True, None, "é"], "c": 0.52}
    for text in ('{"a":1,"a":2}', '{"a":NaN}', '{"a":"\\u00e9"}', '{"a": 1}', '{"a":1e5}',
                 '{"a":"\\ud800"}', '{"a":123456789012345678901234567890}', "", "[1,"):
        assert loads_if_compact(text) is NOT_COMPACT, text


@settings(max_examples=300, deadline=None)
@given(_JSON_VALUES | st.floats() | st.integers() | st.text(alphabet=st.characters(codec="utf-8")))
def test_dumps_sorted_is_json_dumps_sorted(value):
    """Every JSON value (and NaN, infinities, integers over 64 bits) gives json.dumps's exact text."""
    assert dumps_sorted(value) == json.dumps(value, ensure_ascii=False, sort_keys=True)


def test_dumps_sorted_refuses_what_json_dumps_refuses():
    with pytest.raises(TypeError, match="not JSON serializable"):
        dumps_sorted({"a": object()})


_ANY_TEXT = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()),
                    max_size=12)
_CANONICAL_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | _ANY_TEXT,
    lambda children: st.lists(children, max_size=4), max_leaves=12)


@given(value=_CANONICAL_VALUES)
@settings(max_examples=400, deadline=None)
@example(value=["del \x7f", "caf\u00e9", "\u2028", 2**64, "lone \ud800", True, None])
@example(value="\x7f")
def test_canonical_bytes_are_json_dumps_bytes_in_both_forms(value):
    for ascii_only in (False, True):
        expected = json.dumps(value, ensure_ascii=ascii_only, separators=(",", ":")).encode("utf-8", "surrogatepass")
        assert fastjson.canonical_bytes(value, ascii_only=ascii_only) == expected
