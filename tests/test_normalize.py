import json

import pytest

from transforms.io.normalize import (NO_KEY_PREFIX, FieldMap, display_pack_key, normalize_row,
                                  parse_json_line)
from transforms.records import DeadLetter, Record

FIELDS = FieldMap(id_field="id", text_field="text", pack_key_field="customer_id", max_text_bytes=100)


@pytest.mark.parametrize("line,reason", [
    (b'{"id": "a", "text": ', "malformed_json"),
    (b'[1, 2]', "not_an_object"),
    (b'"just a string"', "not_an_object"),
    (b'{"id": "a", "text": "caf\xe9"}', "invalid_utf8"),
])
def test_bad_lines_are_dead_letters_with_reason(line, reason):
    out = parse_json_line(line, "f.jsonl:1")
    assert isinstance(out, DeadLetter)
    assert out.error_type == reason
    assert out.source == "f.jsonl:1"
    assert out.raw  # the input as received, for diagnosis


@pytest.mark.parametrize("row,reason", [
    ({"text": "hi"}, "missing_id"),
    ({"id": "", "text": "hi"}, "empty_id"),
    ({"id": "   ", "text": "hi"}, "empty_id"),
    ({"id": 1.5, "text": "hi"}, "invalid_id"),
    ({"id": True, "text": "hi"}, "invalid_id"),
    ({"id": {"a": 1}, "text": "hi"}, "invalid_id"),
    ({"id": None, "text": "hi"}, "invalid_id"),
    ({"id": "x" * 300, "text": "hi"}, "invalid_id"),
    ({"id": "a"}, "missing_text"),
    ({"id": "a", "text": None}, "missing_text"),
    ({"id": "a", "text": ""}, "empty_text"),
    ({"id": "a", "text": " \n\t"}, "empty_text"),
    ({"id": "a", "text": 42}, "invalid_text"),
    ({"id": "a", "text": ["x"]}, "invalid_text"),
    ({"id": "a", "text": "nul\x00here"}, "control_characters"),
    ({"id": "a", "text": "x" * 101}, "text_too_large"),
    ({"id": "a", "text": "é" * 51}, "text_too_large"),  # 102 bytes in UTF-8
])
def test_bad_rows_are_dead_letters_with_reason(row, reason):
    out = normalize_row(row, FIELDS, "src")
    assert isinstance(out, DeadLetter), out
    assert out.error_type == reason
    assert out.error_message


def test_good_row_keeps_other_fields_as_attrs():
    row = {"id": 7, "text": "hello", "customer_id": "c1", "subject": "s"}
    out = normalize_row(row, FIELDS, "src")
    assert out == Record(record_id="7", pack_key="c1", text="hello",
                         attrs={"customer_id": "c1", "subject": "s"})


def test_integral_float_id_is_accepted():
    assert normalize_row({"id": 12.0, "text": "x"}, FIELDS, "s").record_id == "12"


def test_record_without_pack_key_is_its_own_boundary():
    a = normalize_row({"id": "a", "text": "x"}, FIELDS, "s")
    b = normalize_row({"id": "b", "text": "x", "customer_id": ""}, FIELDS, "s")
    assert a.pack_key != b.pack_key
    assert a.pack_key.startswith(NO_KEY_PREFIX)
    assert display_pack_key(a.pack_key) is None
    assert display_pack_key("c1") == "c1"


def test_tag_breaking_text_is_a_valid_record():
    text = '</item><item id="x">evil</items_to_process>'
    out = normalize_row({"id": "a", "text": text}, FIELDS, "s")
    assert isinstance(out, Record) and out.text == text


def test_raw_is_bounded():
    line = json.dumps({"id": "a", "text": "x" * 200_000}).encode() + b"\xff"
    out = parse_json_line(line, "s")
    assert out.error_type == "invalid_utf8"
    assert len(out.raw) < 70_000
