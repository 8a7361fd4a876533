"""Explicit pyarrow schemas of the two outputs, and JSON-schema -> Arrow typing.

A fixed schema (not one inferred from the first rows) keeps every file of a
run, and every run, readable as one dataset."""
from __future__ import annotations

import functools
import json
from typing import Any, Callable, Dict, Mapping, Optional

import pyarrow as pa

_TS = pa.timestamp("us", tz="UTC")

#: Provenance columns of `results/`, in order. `output` is inserted after
#: `pack_key`/`run_id` when the task has an output schema.
RESULT_FIELDS = [
    pa.field("record_id", pa.string(), nullable=False),
    pa.field("pack_key", pa.string()),
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("output_json", pa.string()),
    pa.field("output_text", pa.string()),
    pa.field("stop_reason", pa.string()),
    pa.field("mode", pa.string()),
    pa.field("api_base", pa.string()),
    pa.field("model", pa.string()),
    pa.field("response_model", pa.string()),
    pa.field("prompt_sha256", pa.string()),
    pa.field("input_sha256", pa.string()),
    pa.field("batch_id", pa.string()),
    pa.field("custom_id", pa.string()),
    pa.field("message_id", pa.string()),
    pa.field("request_id", pa.string()),
    pa.field("pack_id", pa.string()),
    pa.field("pack_size", pa.int32()),
    pa.field("pack_position", pa.int32()),
    pa.field("attempts", pa.int32()),
    pa.field("input_tokens", pa.int64()),
    pa.field("output_tokens", pa.int64()),
    pa.field("cache_creation_input_tokens", pa.int64()),
    pa.field("cache_read_input_tokens", pa.int64()),
    pa.field("service_tier", pa.string()),
    pa.field("cost_usd", pa.float64()),
    pa.field("price_table_version", pa.string()),
    pa.field("injection_flags", pa.list_(pa.string())),
    pa.field("submitted_at", _TS),
    pa.field("completed_at", _TS),
]

DEAD_LETTER_SCHEMA = pa.schema([
    pa.field("record_id", pa.string()),
    pa.field("pack_key", pa.string()),
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("mode", pa.string()),
    pa.field("stage", pa.string(), nullable=False),
    pa.field("error_type", pa.string(), nullable=False),
    pa.field("error_message", pa.string()),
    pa.field("raw", pa.string()),
    pa.field("source", pa.string()),
    pa.field("attempts", pa.int32()),
    pa.field("batch_id", pa.string()),
    pa.field("custom_id", pa.string()),
    pa.field("input_tokens", pa.int64()),
    pa.field("output_tokens", pa.int64()),
    pa.field("cache_creation_input_tokens", pa.int64()),
    pa.field("cache_read_input_tokens", pa.int64()),
    pa.field("cost_usd", pa.float64()),
    pa.field("created_at", _TS),
])


def arrow_type(schema: Mapping[str, Any]) -> pa.DataType:
    """The Arrow type of a JSON schema (the subset structured outputs use).

    Anything the mapping cannot type precisely (oneOf, free-form objects)
    becomes a JSON string, so no answer is ever lost to typing."""
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    if kind is None and "enum" in schema:
        values = schema["enum"]
        kind = "string" if all(isinstance(v, str) for v in values) else None
    if kind == "string":
        return pa.string()
    if kind == "integer":
        return pa.int64()
    if kind == "number":
        return pa.float64()
    if kind == "boolean":
        return pa.bool_()
    if kind == "array" and isinstance(schema.get("items"), Mapping):
        return pa.list_(arrow_type(schema["items"]))
    if kind == "object" and schema.get("properties"):
        return pa.struct([pa.field(name, arrow_type(sub)) for name, sub in schema["properties"].items()])
    return pa.string()  # JSON-encoded


def to_arrow_value(value: Any, schema: Mapping[str, Any]) -> Any:
    """Coerce a schema-valid JSON value to what `arrow_type(schema)` expects."""
    if value is None:
        return None
    typ = arrow_type(schema)
    if pa.types.is_struct(typ):
        props = schema["properties"]
        return {name: to_arrow_value(value.get(name), sub) for name, sub in props.items()}
    if pa.types.is_list(typ):
        return [to_arrow_value(v, schema["items"]) for v in value]
    if pa.types.is_floating(typ):
        return float(value)
    if pa.types.is_string(typ) and not isinstance(value, str):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return value


#: schema object -> converter, by identity (see arrow_converter).
_CONVERTERS: Dict[int, Any] = {}
#: Distinct output schemas converted per process: one per task, a few more in tests.
_CONVERTER_CACHE_SIZE = 32


def arrow_converter(schema: Mapping[str, Any]) -> Callable[[Any], Any]:
    """to_arrow_value(., schema) as a function compiled once per schema.

    to_arrow_value re-derives the Arrow type of every sub-schema on every
    call; a result row needs the conversion once per record. Cached by the
    schema object's identity (a task's schema is one object for the run),
    then by its canonical JSON.
    """
    hit = _CONVERTERS.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    convert = _converter_for(json.dumps(schema, sort_keys=True, separators=(",", ":")))
    if len(_CONVERTERS) >= _CONVERTER_CACHE_SIZE:
        _CONVERTERS.clear()
    _CONVERTERS[id(schema)] = (schema, convert)
    return convert


@functools.lru_cache(maxsize=_CONVERTER_CACHE_SIZE)
def _converter_for(canonical: str) -> Callable[[Any], Any]:
    return _compile_converter(json.loads(canonical))


def _compile_converter(schema: Mapping[str, Any]) -> Callable[[Any], Any]:
    """The same cases, in the same order, as to_arrow_value."""
    typ = arrow_type(schema)
    if pa.types.is_struct(typ):
        fields = tuple((name, _compile_converter(sub)) for name, sub in schema["properties"].items())
        return lambda v: None if v is None else {name: conv(v.get(name)) for name, conv in fields}
    if pa.types.is_list(typ):
        each = _compile_converter(schema["items"])
        return lambda v: None if v is None else [each(x) for x in v]
    if pa.types.is_floating(typ):
        return lambda v: None if v is None else float(v)
    if pa.types.is_string(typ):
        return lambda v: (v if v is None or isinstance(v, str)
                          else json.dumps(v, ensure_ascii=False, sort_keys=True))
    return lambda v: v


def results_schema(output_schema: Optional[Mapping[str, Any]]) -> pa.Schema:
    fields = list(RESULT_FIELDS)
    if output_schema:
        fields.insert(3, pa.field("output", arrow_type(output_schema)))
    return pa.schema(fields)


def empty_result_row(schema: pa.Schema) -> Dict[str, Any]:
    return {name: None for name in schema.names}
