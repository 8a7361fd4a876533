"""ReadPubSubRecords: Pub/Sub messages -> Records + dead letters (streaming)."""
from __future__ import annotations

import json
from typing import Iterator, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from apache_beam.coders import coders
from apache_beam.transforms import window
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from transforms.normalize import FieldMap, normalize_row, parse_json_line, raw_to_text
from transforms.records import DeadLetter, Reason, Stage

__all__ = ["ReadPubSubRecords"]

DEAD = "dead_letter"


class _ParseMessage(beam.DoFn):
    """One message -> Record or DeadLetter. A malformed payload is dead-lettered
    (and so acknowledged): it is never redelivered forever."""

    def __init__(self, fields: FieldMap, id_attribute: Optional[str]):
        self._fields = fields
        self._id_attribute = id_attribute
        self._read = Metrics.counter("claude", "records_read")

    def process(self, message) -> Iterator:
        self._read.inc()
        attributes = dict(message.attributes or {})
        source = f"pubsub:{message.message_id or attributes.get(self._id_attribute or '', '')}"
        row = parse_json_line(message.data, source)
        if isinstance(row, DeadLetter):
            yield TaggedOutput(DEAD, row)
            return
        if self._id_attribute and self._id_attribute in attributes:
            row = {**row, self._fields.id_field: attributes[self._id_attribute]}
        out = normalize_row(row, self._fields, source, raw=message.data)
        yield TaggedOutput(DEAD, out) if isinstance(out, DeadLetter) else out


class ReadPubSubRecords(beam.PTransform):
    """Reads a subscription (or a topic, through a temporary subscription) into Records.

    id_attribute: the message attribute holding the record id (else the payload's id field);
    it is also Beam's `id_label`, so runners that support it (Dataflow) drop
    redelivered duplicates.
    """

    def __init__(self, fields: FieldMap, subscription: Optional[str] = None, topic: Optional[str] = None,
                 id_attribute: Optional[str] = None, window_secs: float = 60.0, use_id_label: bool = True):
        super().__init__()
        self._window_secs = window_secs
        self._use_id_label = use_id_label
        if bool(subscription) == bool(topic):
            raise ValueError("give exactly one of --input-subscription and --input-topic")
        self._fields = fields
        self._subscription = subscription
        self._topic = topic
        self._id_attribute = id_attribute

    def expand(self, pbegin):
        # The DirectRunner does not support id_label; Dataflow dedupes with it.
        messages = (pbegin
                    | "Read Pub/Sub" >> beam.io.ReadFromPubSub(
                        subscription=self._subscription, topic=self._topic, with_attributes=True,
                        id_label=self._id_attribute if self._use_id_label else None)
                    | "Window" >> beam.WindowInto(window.FixedWindows(self._window_secs)))
        parsed = messages | "Parse messages" >> beam.ParDo(
            _ParseMessage(self._fields, self._id_attribute)).with_outputs(DEAD, main="records")
        unique = (parsed.records
                  | "Key by id" >> beam.Map(lambda r: (r.record_id, r))
                  | "Drop repeated ids" >> beam.ParDo(_FirstInWindow()).with_outputs(DEAD, main="records"))
        dead = (parsed[DEAD], unique[DEAD]) | "Merge source dead letters" >> beam.Flatten()
        return {"records": unique.records, "dead_letter": dead}


class _FirstInWindow(beam.DoFn):
    """The first record of each id in a window; later ones are duplicate_id dead
    letters. State is per (id, window), so Beam frees it when the window expires."""

    SEEN = ReadModifyWriteStateSpec("seen", coders.BooleanCoder())

    def process(self, element, seen=beam.DoFn.StateParam(SEEN)) -> Iterator:
        record_id, record = element
        if seen.read():
            yield TaggedOutput(DEAD, DeadLetter(
                record_id=record_id, pack_key=record.pack_key, stage=Stage.DEDUPE.value,
                error_type=Reason.DUPLICATE_ID.value,
                error_message="id already received in this window; first one wins",
                raw=raw_to_text({"text": record.text, **record.attrs})))
            return
        seen.write(True)
        yield record


def to_json_bytes(row) -> bytes:
    """A result or dead-letter row as a Pub/Sub payload (timestamps as ISO 8601)."""
    return json.dumps(row, default=str, ensure_ascii=False).encode("utf-8")
