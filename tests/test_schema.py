import pyarrow as pa

import pytest

from transforms.io.schema import arrow_converter, arrow_type, results_schema, to_arrow_value

SCHEMA = {"type": "object", "properties": {
    "sentiment": {"type": "string", "enum": ["positive", "negative"]},
    "score": {"type": "number"},
    "n": {"type": "integer"},
    "tags": {"type": "array", "items": {"type": "string"}},
    "free": {"type": "object"},
    "maybe": {"type": ["string", "null"]},
}}


def test_arrow_type_of_json_schema():
    t = arrow_type(SCHEMA)
    assert t == pa.struct([("sentiment", pa.string()), ("score", pa.float64()), ("n", pa.int64()),
                           ("tags", pa.list_(pa.string())), ("free", pa.string()), ("maybe", pa.string())])


def test_values_round_trip_through_arrow():
    value = {"sentiment": "positive", "score": 1, "n": 3, "tags": ["a"], "free": {"k": 1}}
    row = to_arrow_value(value, SCHEMA)
    assert row["score"] == 1.0 and isinstance(row["score"], float)
    assert row["free"] == '{"k": 1}'
    assert row["maybe"] is None
    table = pa.Table.from_pylist([{"o": row}], schema=pa.schema([("o", arrow_type(SCHEMA))]))
    assert table.to_pylist()[0]["o"]["sentiment"] == "positive"


def test_results_schema_has_output_only_with_a_schema():
    assert "output" in results_schema(SCHEMA).names
    assert "output" not in results_schema(None).names
    for name in ("batch_id", "custom_id", "prompt_sha256", "input_sha256", "cost_usd", "run_id"):
        assert name in results_schema(None).names


@pytest.mark.parametrize("value", [
    {"sentiment": "positive", "score": 1, "n": 3, "tags": ["a", "b"], "free": {"k": 1, "a": [1]}, "maybe": "x"},
    {"sentiment": "negative", "score": -0.5, "tags": [], "free": "already text"},
    {},
    None,
])
def test_compiled_converter_equals_to_arrow_value(value):
    assert arrow_converter(SCHEMA)(value) == to_arrow_value(value, SCHEMA)


def test_compiled_converter_is_built_once_per_schema():
    assert arrow_converter(SCHEMA) is arrow_converter(SCHEMA)
    assert arrow_converter(SCHEMA) is arrow_converter(dict(SCHEMA))  # equal schema, same converter
