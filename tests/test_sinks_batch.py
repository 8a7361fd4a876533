"""WriteParquet's row conversion gives Beam's tables, a record batch at a time."""
import datetime as dt

import pytest
from apache_beam.io import parquetio

from transforms import sinks
from transforms.schema import results_schema

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
