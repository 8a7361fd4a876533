"""WriteParquet's row conversion gives Beam's tables, a record batch at a time."""
import datetime as dt
import math

import pyarrow as pa
import pytest
from apache_beam.io import parquetio

from transforms.io import sinks
from transforms.io.schema import results_schema

SCHEMA = results_schema({"type": "object", "properties": {"label": {"type": "string"}, "score": {"type": "number"}}})
NOW = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)


def _row(i):
    row = {f.name: None for f in SCHEMA}
    row.update(record_id=f"r{i}", run_id="run", injection_flags=["x"] * (i % 3), submitted_at=NOW,
               output={"label": "a", "score": i / 7} if i % 5 else None, input_tokens=i, cost_usd=i * 0.001)
    return row


def _tables(fn, rows):
    out = []
    for row in rows:
        out.extend(fn.process(dict(row), w=None) or [])
    out.extend(t.value for t in fn.finish_bundle() or [])
    return out


@pytest.mark.parametrize("rows,batch,group", [(2500, 1000, 64 << 20), (2500, 100, 20_000), (3, 1000, 64 << 20)])
def test_same_tables_as_beams(rows, batch, group):
    data = [_row(i) for i in range(rows)]
    ours = _tables(sinks._RowDictionariesToArrowTable(SCHEMA, group, batch), data)
    beams = _tables(parquetio._RowDictionariesToArrowTable(SCHEMA, group, batch), data)
    assert [t.num_rows for t in ours] == [t.num_rows for t in beams]
    assert all(a.equals(b) for a, b in zip(ours, beams))


def test_a_row_without_a_required_field_fails_as_in_beam():
    row = _row(1)
    del row["record_id"]
    with pytest.raises(KeyError):
        _tables(sinks._RowDictionariesToArrowTable(SCHEMA), [row])


def _buffer_sizes(batch):
    return [[b.size if b is not None else None for b in column.buffers()] for column in batch.columns]


def _record_batch(rows, schema=SCHEMA):
    """sinks.record_batch of row dicts (each complete), and from_pylist's batch of them."""
    values = sinks.values_getter(schema)
    return sinks.record_batch([values(r) for r in rows], schema), pa.RecordBatch.from_pylist(rows, schema=schema)


def _rows_with_constant_columns():
    """Every column of SCHEMA: constant objects (None included), varying ones, and
    values equal to their neighbours without being the same object."""
    flags = ["a", "b"]
    rows = []
    for i in range(50):
        row = _row(i)
        row.update(mode="batch", completed_at=NOW, injection_flags=flags, output={"label": "x", "score": 0.5},
                   cost_usd=0.0 if i % 2 else -0.0, pack_size=1, attempts=int("7"),
                   stop_reason="".join(["end", "_turn"]))
        rows.append(row)
    return rows


@pytest.mark.parametrize("rows", [
    [_row(i) for i in range(7)],
    _rows_with_constant_columns(),
    [dict(_rows_with_constant_columns()[0])],
])
def test_record_batch_is_from_pylist(rows):
    ours, theirs = _record_batch(rows)
    assert ours.equals(theirs)
    assert _buffer_sizes(ours) == _buffer_sizes(theirs)  # the byte accounting of row groups
    assert ours.to_pylist() == theirs.to_pylist()


def test_rows_lacking_nullable_fields_convert_as_in_beam():
    rows = [_row(i) for i in range(5)]
    del rows[2]["pack_key"], rows[4]["output"]
    ours = _tables(sinks._RowDictionariesToArrowTable(SCHEMA), rows)
    beams = _tables(parquetio._RowDictionariesToArrowTable(SCHEMA), rows)
    assert len(ours) == 1 and ours[0].equals(beams[0])


def test_record_batch_keeps_minus_zero_apart_from_zero():
    # Equal, not identical: a column is converted once only when it repeats one object.
    ours, _ = _record_batch([dict(_row(0), cost_usd=0.0), dict(_row(1), cost_usd=-0.0)])
    assert [math.copysign(1, v) for v in ours.column("cost_usd").to_pylist()] == [1, -1]


def test_record_batch_of_no_rows_and_of_a_one_field_schema():
    assert sinks.record_batch([], SCHEMA).num_rows == 0
    one = pa.schema([pa.field("record_id", pa.string(), nullable=False)])
    ours, theirs = _record_batch([{"record_id": "a"}, {"record_id": "a", "extra": 1}], one)
    assert ours.equals(theirs)
