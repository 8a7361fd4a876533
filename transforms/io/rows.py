"""Rows a caller already holds (dicts from any Beam source) -> Records, for the library API.

The file and Pub/Sub readers normalize as they parse; a pipeline that brings
its own rows (BigQuery, Kafka, a Create) gets the same checks here: the same
`normalize_row`, and the same first-of-each-id rule with later copies as
`duplicate_id` dead letters.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping, Tuple

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from transforms.io.normalize import FieldMap, normalize_row, raw_to_text
from transforms.io.pubsub import DropRepeatedIds
from transforms.records import DeadLetter, Reason, Record, Stage

__all__ = ["NormalizeRows"]

DEAD = "dead_letter"
#: What a dead letter's `source` says for rows handed over by the caller.
SOURCE = "input rows"


class _Normalize(beam.DoFn):
    def __init__(self, fields: FieldMap):
        self._fields = fields

    def process(self, row: Any) -> Iterator:
        if not isinstance(row, Mapping):
            yield TaggedOutput(DEAD, DeadLetter(
                record_id=None, pack_key=None, stage=Stage.NORMALIZE.value,
                error_type=Reason.NOT_AN_OBJECT.value,
                error_message=f"expected a mapping of field names to values, got {type(row).__name__}",
                raw=repr(row)[:10_000], source=SOURCE))
            return
        out = normalize_row(row, self._fields, SOURCE)
        yield TaggedOutput(DEAD, out) if isinstance(out, DeadLetter) else out


class _FirstOfEachId(beam.DoFn):
    """(id, copies) -> the copy whose content sorts first (the same on every
    rerun, whatever order the rows arrived in); the others are duplicate_id."""

    def process(self, element: Tuple[str, Iterable[Record]]) -> Iterator:
        record_id, copies = element
        copies = sorted(copies, key=_content_key)
        yield copies[0]
        for record in copies[1:]:
            yield TaggedOutput(DEAD, DeadLetter(
                record_id=record_id, pack_key=record.pack_key, stage=Stage.DEDUPE.value,
                error_type=Reason.DUPLICATE_ID.value,
                error_message="id already used by another row; the one whose content sorts first wins",
                raw=raw_to_text({"text": record.text, **record.attrs}), source=SOURCE))


def _content_key(record: Record) -> str:
    return raw_to_text({"text": record.text, **record.attrs})


class NormalizeRows(beam.PTransform):
    """PCollection[Mapping] -> {'records': PCollection[Record], 'dead_letter': PCollection[DeadLetter]}.

    One Record per unique id (bounded input: the copy whose content sorts
    first; streaming input: the first seen within a window); every other row is a dead letter with its reason.
    """

    def __init__(self, fields: FieldMap = FieldMap()):
        super().__init__()
        self._fields = fields

    def expand(self, rows):
        parsed = rows | "Normalize rows" >> beam.ParDo(_Normalize(self._fields)).with_outputs(DEAD, main="records")
        if rows.is_bounded:
            # A GroupByKey, not the streaming dedupe: its expiry timer would
            # put the job on the DirectRunner's legacy runner.
            unique = (parsed.records
                      | "Key by id" >> beam.Map(lambda r: (r.record_id, r))
                      | "Group by id" >> beam.GroupByKey()
                      | "First of each id" >> beam.ParDo(_FirstOfEachId()).with_outputs(DEAD, main="records"))
            unique = {"records": unique.records, "dead_letter": unique[DEAD]}
        else:
            unique = parsed.records | "Drop repeated ids" >> DropRepeatedIds()
        dead = (parsed[DEAD], unique["dead_letter"]) | "Merge row dead letters" >> beam.Flatten()
        return {"records": unique["records"], "dead_letter": dead}
