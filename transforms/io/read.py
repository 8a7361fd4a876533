"""ReadRecords: files (JSONL, CSV, Parquet; local or gs://) -> Records + dead letters."""
from __future__ import annotations

import csv
import io
import os
from typing import Iterable, Iterator, Optional, Tuple

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from transforms.io.normalize import FieldMap, normalize_row, parse_json_line, raw_to_text
from transforms.records import DeadLetter, Reason, Record, Stage

__all__ = ["ReadRecords", "FORMATS", "detect_format"]

FORMATS = ("jsonl", "csv", "parquet")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
               ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
#: Tag of the dead-letter output of every step in this module.
DEAD = "dead_letter"
#: CSV fields can legitimately hold long emails; the csv module's default
#: limit (128 KiB) would fail them, so allow up to the text cap and a margin.
_CSV_FIELD_LIMIT = 64 * 1024 * 1024
#: Parquet rows are read in slices of this many so memory stays flat however big the file.
_PARQUET_BATCH_ROWS = 8192

#: (source, position, record) on the way to dedupe: position decides which copy wins.
Positioned = Tuple[str, int, Record]


def detect_format(path: str, override: Optional[str] = None) -> str:
    """The input format from --input-format or the file extension (.gz ignored)."""
    if override:
        return override
    base = path[:-3] if path.endswith(".gz") else path
    ext = os.path.splitext(base)[1].lower()
    if ext not in _EXTENSIONS:
        raise ValueError(f"cannot tell the format of {path!r} from its extension; "
                         f"pass --input-format ({', '.join(FORMATS)})")
    return _EXTENSIONS[ext]


class _ParseFile(beam.DoFn):
    """Streams one file row by row (never whole in memory), normalizing each row."""

    def __init__(self, fields: FieldMap, input_format: Optional[str]):
        self._fields = fields
        self._format = input_format
        self._rows = Metrics.counter("claude", "records_read")

    def process(self, readable: fileio.ReadableFile) -> Iterator:
        path = readable.metadata.path
        try:
            fmt = detect_format(path, self._format)
            with readable.open() as f:
                for index, item in enumerate(self._rows_of(f, fmt, path)):
                    self._rows.inc()
                    if isinstance(item, DeadLetter):
                        yield TaggedOutput(DEAD, item)
                    else:
                        yield (item.record_id, (path, index, item))
        except Exception as e:  # noqa: BLE001 - any unreadable file becomes one dead letter, not a crash
            yield TaggedOutput(DEAD, DeadLetter(
                record_id=None, pack_key=None, stage=Stage.READ.value,
                error_type=Reason.UNREADABLE_FILE.value,
                error_message=f"{type(e).__name__}: {e} (rows before this point were read)",
                raw=None, source=path))

    def _rows_of(self, f, fmt: str, path: str) -> Iterator:
        if fmt == "jsonl":
            # iter(readline): Beam's CompressedFile (a .gz input) has readline but is not iterable.
            for n, line in enumerate(iter(f.readline, b""), start=1):
                line = line.rstrip(b"\r\n")
                if not line.strip():
                    continue  # blank lines are layout, not records
                source = f"{path}:{n}"
                row = parse_json_line(line, source)
                yield row if isinstance(row, DeadLetter) else normalize_row(row, self._fields, source, raw=line)
        elif fmt == "csv":
            csv.field_size_limit(_CSV_FIELD_LIMIT)
            text = io.TextIOWrapper(f, encoding="utf-8", errors="surrogateescape", newline="")
            reader = csv.DictReader(text)
            for row in reader:
                source = f"{path}:{reader.line_num}"
                if None in row or None in row.values():
                    yield DeadLetter(None, None, Stage.NORMALIZE.value, Reason.MALFORMED_CSV.value,
                                     f"row has {'more' if None in row else 'fewer'} fields than the header",
                                     raw=raw_to_text(row), source=source)
                    continue
                yield normalize_row(row, self._fields, source)
        else:
            import pyarrow.parquet as pq
            n = 0
            for batch in pq.ParquetFile(f).iter_batches(batch_size=_PARQUET_BATCH_ROWS):
                for row in _parquet_rows(batch):
                    n += 1
                    yield normalize_row(row, self._fields, f"{path}#{n}")


def _parquet_rows(batch) -> list:
    """The rows of a Parquet record batch as dicts.

    A string column may hold bytes that are not UTF-8 (Parquet writers do not
    all check): to_pylist would then fail the whole file. Such a batch is
    converted column by column instead, the strings of a string column decoded
    with surrogateescape, so that each bad value is judged (and dead-lettered)
    in its own row like a CSV field.
    """
    try:
        return batch.to_pylist()
    except UnicodeDecodeError:
        pass
    import pyarrow as pa
    columns = []
    for column in batch.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            raw = column.view(pa.large_binary() if pa.types.is_large_string(column.type) else pa.binary())
            columns.append([None if v is None else v.decode("utf-8", "surrogateescape") for v in raw.to_pylist()])
        else:
            columns.append(column.to_pylist())  # nested strings that are not UTF-8 still fail the file
    names = batch.schema.names
    return [dict(zip(names, values)) for values in zip(*columns)]


class _KeepFirst(beam.DoFn):
    """Of several records with one id, keeps the first in (file, position) order."""

    def __init__(self):
        self._dupes = Metrics.counter("claude", "duplicate_ids")

    def process(self, element: Tuple[str, Iterable[Positioned]]) -> Iterator:
        record_id, copies = element
        copies = list(copies)
        if len(copies) == 1:  # nearly always: no sort, no key function
            yield copies[0][2]
            return
        ordered = sorted(copies, key=lambda c: (c[0], c[1]))
        yield ordered[0][2]
        for path, index, record in ordered[1:]:
            self._dupes.inc()
            yield TaggedOutput(DEAD, DeadLetter(
                record_id=record_id, pack_key=record.pack_key, stage=Stage.DEDUPE.value,
                error_type=Reason.DUPLICATE_ID.value,
                error_message=f"id already used by the record at {ordered[0][0]} (row {ordered[0][1] + 1}); first one wins",
                raw=raw_to_text({"text": record.text, **record.attrs}), source=f"{path} (row {index + 1})"))


class ReadRecords(beam.PTransform):
    """Reads every file matching `pattern` into Records, one per unique id.

    Outputs a tuple-like result with `records` (PCollection[Record]) and
    `dead_letter` (PCollection[DeadLetter]): malformed rows, bad fields and
    duplicate ids, each with its reason. Nothing is dropped silently.
    """

    def __init__(self, pattern: str, fields: FieldMap, input_format: Optional[str] = None):
        super().__init__()
        self._pattern = pattern
        self._fields = fields
        self._format = input_format

    def expand(self, pbegin):
        files = (pbegin
                 | "Match files" >> fileio.MatchFiles(self._pattern)
                 | "Open files" >> fileio.ReadMatches())
        parsed = files | "Parse rows" >> beam.ParDo(
            _ParseFile(self._fields, self._format)).with_outputs(DEAD, main="rows")
        unique = (parsed.rows
                  | "Group by id" >> beam.GroupByKey()
                  | "Keep first of each id" >> beam.ParDo(_KeepFirst()).with_outputs(DEAD, main="records"))
        dead = ((parsed[DEAD], unique[DEAD])
                | "Merge read dead letters" >> beam.Flatten())
        return {"records": unique.records, "dead_letter": dead}
