"""WriteWindowedParquet: the streaming sink, one Parquet file per window per bundle.

Beam's WriteToParquet is for bounded input, and on the DirectRunner the
windowed fileio path was seen to lose timer-flushed elements (see
docs/decisions.md). This sink writes each bundle's rows of each window in
finish_bundle, to a name derived from the window bounds and the rows' ids:
a retried bundle rewrites the same file instead of adding a duplicate, and
nothing waits on a trigger that may never fire.
"""
from __future__ import annotations

import collections
import hashlib
import itertools
import operator
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import parquetio
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms import window as beam_window
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

__all__ = ["WriteParquet", "WriteWindowedParquet", "record_batch", "window_dir"]


def window_dir(window) -> str:
    """'window-<start>-<end>' in UTC (the global window is 'window-global')."""
    if isinstance(window, GlobalWindow):
        return "window-global"
    fmt = "%Y%m%dT%H%M%SZ"
    start = window.start.to_utc_datetime().strftime(fmt)
    end = window.end.to_utc_datetime().strftime(fmt)
    return f"window-{start}-{end}"


class _WriteFiles(beam.DoFn):

    def __init__(self, directory: str, schema: pa.Schema, id_of: Callable[[Dict[str, Any]], Any]):
        self._directory = directory.rstrip("/")
        self._schema = schema
        self._id_of = id_of
        self._rows: Dict[Any, List[Dict[str, Any]]] = {}
        self._files = beam.metrics.Metrics.counter("claude", "parquet_files_written")

    def start_bundle(self):
        self._rows = collections.defaultdict(list)

    def process(self, row: Dict[str, Any], window=beam.DoFn.WindowParam):
        self._rows[window].append(row)

    def finish_bundle(self):
        for window, rows in self._rows.items():
            ids = sorted(str(self._id_of(r)) for r in rows)
            digest = hashlib.sha256("\n".join(ids).encode("utf-8", "surrogatepass")).hexdigest()[:24]
            path = f"{self._directory}/{window_dir(window)}/part-{digest}.parquet"
            _write_whole(path, pa.Table.from_pylist(rows, schema=self._schema))
            self._files.inc()
        self._rows = {}


def _write_whole(path: str, table: pa.Table) -> None:
    """Write `table` to `path` so that no reader ever sees a part of it.

    A streaming job's output is read while the job runs: a file that appears
    empty or half written would fail (or mislead) the reader. Object stores
    (gs://) publish an object only when its upload completes; on a local or
    mounted disk the file is written under a hidden temporary name in the same
    directory and renamed into place, which is atomic there.
    """
    if FileSystems.get_scheme(path) not in (None, "file"):
        with FileSystems.create(path) as f:
            pq.write_table(table, f)
        return
    directory, name = path.rsplit("/", 1)
    temporary = f"{directory}/.{name}.{uuid.uuid4().hex}.tmp"
    with FileSystems.create(temporary) as f:
        pq.write_table(table, f)
    # LocalFileSystem.rename is os.rename: atomic, and it replaces the file a
    # retried bundle wrote before.
    FileSystems.rename([temporary], [path])


class WriteWindowedParquet(beam.PTransform):
    """PCollection[dict] -> Parquet files under DIRECTORY/window-START-END/."""

    def __init__(self, directory: str, schema: pa.Schema,
                 id_of: Optional[Callable[[Dict[str, Any]], Any]] = None):
        super().__init__()
        self._args = (directory, schema, id_of or (lambda r: (r.get("record_id"), r.get("error_type"),
                                                              r.get("source"))))

    def expand(self, rows):
        return rows | "Write files" >> beam.ParDo(_WriteFiles(*self._args))


class _RowDictionariesToArrowTable(parquetio._RowDictionariesToArrowTable):
    """Beam's row-dict -> Arrow table step, with a whole record batch converted at once.

    Beam's appends each row to per-column lists field by field, asking the
    schema for every field of every row (~35 calls per result row, the
    largest part of writing results). This one keeps each row's values (one
    C-level itemgetter call, while the row is still in the CPU cache) and
    converts each `record_batch_size` of them at once (record_batch: the
    arrays of RecordBatch.from_pylist); the batches, their byte accounting
    and so the row groups are the same.
    Same class name, so the step keeps its name ("ParDo(_RowDictionariesToArrowTable)").
    """

    def __init__(self, schema, row_group_buffer_size=64 * 1024 * 1024, record_batch_size=1000):
        super().__init__(schema, row_group_buffer_size, record_batch_size)
        self._rows: List[tuple] = []
        self._values = values_getter(schema)
        #: Beam's converter raises KeyError for a row without a non-nullable field; so does this one.
        self._required = tuple(f.name for f in schema if not f.nullable)

    def process(self, row, w=beam.DoFn.WindowParam):
        self._window = w
        if len(self._rows) >= self._buffer_size:
            self._flush_buffer()
        if self._record_batches_byte_size >= self._row_group_buffer_size:
            yield self._create_table()
        self._rows.append(self._values_of(row))

    def _values_of(self, row: Dict[str, Any]) -> tuple:
        try:
            return self._values(row)
        except KeyError:
            for name in self._required:
                row[name]  # noqa: B018 - a missing required field fails here, as in Beam's
            return tuple(row.get(name) for name in self._schema.names)  # a nullable one is None

    def finish_bundle(self):
        if self._rows:
            self._flush_buffer()
        if self._record_batches_byte_size > 0:
            table = self._create_table()
            if self._window is None or isinstance(self._window, GlobalWindow):
                yield beam_window.GlobalWindows.windowed_value_at_end_of_window(table)
            else:
                yield WindowedValue(table, timestamp=self._window.end, windows=[self._window])

    def _flush_buffer(self):
        batch = record_batch(self._rows, self._schema)
        self._rows = []
        self._record_batches.append(batch)
        self._record_batches_byte_size += sum(
            b.size for column in batch.columns for b in column.buffers() if b is not None)


def values_getter(schema: pa.Schema) -> Callable[[Dict[str, Any]], tuple]:
    """row dict -> its values in schema order, as a tuple (KeyError for a missing field)."""
    if len(schema.names) == 1:  # itemgetter of one name returns the value, not a 1-tuple
        name = schema.names[0]
        return lambda row: (row[name],)
    return operator.itemgetter(*schema.names)


def record_batch(rows: Sequence[tuple], schema: pa.Schema) -> pa.RecordBatch:
    """RecordBatch.from_pylist of the row dicts whose values_getter(schema) are `rows`.

    The same arrays (values, nulls and buffers): the columns are one C-level
    transposition of the rows, and a column holding one object in every row
    (the run's constants, a batch's timestamps: a datetime costs ~0.2 us to
    convert) is converted once.
    """
    if not rows:
        return pa.RecordBatch.from_pylist([], schema=schema)
    arrays = [_array(column, field.type) for column, field in zip(zip(*rows), schema)]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _array(column: tuple, typ: pa.DataType) -> pa.Array:
    """pa.array(column, type=typ), converting a column of one repeated object only once.

    Identity, not equality: equal values can still convert differently
    (0.0 and -0.0). A null column is left to pa.array, whose buffers for it
    pa.repeat does not reproduce.
    """
    first = column[0]
    if first is not None and all(map(operator.is_, column, itertools.repeat(first))):
        return pa.repeat(pa.scalar(first, type=typ), len(column))
    return pa.array(column, type=typ)


class WriteParquet(parquetio.WriteToParquet):
    """beam.io.WriteToParquet for row dicts, with the faster row conversion above.

    Same arguments, same steps, same files; bounded input only (the streaming
    graph writes with WriteWindowedParquet).
    """

    def expand(self, pcoll):
        if not pcoll.is_bounded or self._schema is None:
            return super().expand(pcoll)
        convert = _RowDictionariesToArrowTable(self._schema, self._row_group_buffer_size,
                                               self._record_batch_size)
        return pcoll | beam.ParDo(convert) | beam.io.iobase.Write(self._sink)
