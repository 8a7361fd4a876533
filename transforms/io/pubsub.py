"""ReadPubSubRecords: Pub/Sub messages -> Records + dead letters (streaming)."""
from __future__ import annotations

import json
import zlib
from typing import Any, Callable, Iterator, Optional, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from apache_beam.coders import coders
from apache_beam.transforms import window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import SetStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Duration, Timestamp

from transforms.io.normalize import FieldMap, normalize_row, parse_json_line, raw_to_text
from transforms.records import DeadLetter, Reason, Stage

__all__ = ["DropRepeatedIds", "ReadPubSubRecords", "dedupe_bucket"]

DEAD = "dead_letter"

#: Keys of the dedupe state: ids are hashed into this many buckets, so the set
#: of keys stays fixed however many ids arrive (the DirectRunner keeps an
#: object per key ever seen, for the life of the job), while a runner that
#: spreads keys over workers (Dataflow) still has 256 to spread.
DEDUPE_BUCKETS = 256
#: Processing-time seconds the ids of a (bucket, window) are kept after the
#: last of them arrived, on top of one window length. Processing time, not the
#: watermark: the DirectRunner's Pub/Sub watermark is the wall clock, so under a
#: backlog every window has already "ended" when its records arrive, and an
#: event-time expiry would forget an id before its copy (pulled a moment later)
#: is seen. A minute covers a copy published or pulled right after the first.
DEDUPE_IDLE_GRACE_S = 60


def dedupe_bucket(record_id: str, buckets: int = DEDUPE_BUCKETS) -> int:
    """The dedupe key of an id: stable across processes and runs (crc32, not
    the salted hash()), so every copy of an id meets the same state."""
    return zlib.crc32(record_id.encode("utf-8", "surrogatepass")) % buckets


def expiry_time(now: Timestamp, window, grace_s: float = DEDUPE_IDLE_GRACE_S) -> Timestamp:
    """When the ids of a (bucket, window) are dropped if no other id arrives:
    now (processing time) + the window's length + the grace."""
    return now + (window.end - window.start) + Duration.of(grace_s)


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
        unique = parsed.records | "Drop repeated ids" >> DropRepeatedIds()
        dead = (parsed[DEAD], unique["dead_letter"]) | "Merge source dead letters" >> beam.Flatten()
        return {"records": unique["records"], "dead_letter": dead}


class DropRepeatedIds(beam.PTransform):
    """Windowed Records -> {'records': the first of each id per window,
    'dead_letter': later copies as duplicate_id}, with bounded state."""

    def __init__(self, buckets: int = DEDUPE_BUCKETS, idle_grace_s: float = DEDUPE_IDLE_GRACE_S,
                 clock: Callable[[], Timestamp] = Timestamp.now):
        super().__init__()
        self._buckets = buckets
        self._grace = idle_grace_s
        self._clock = clock

    def expand(self, records):
        buckets = self._buckets
        out = (records
               # Typed so the state's key coder is a deterministic int coder.
               | "Key by id bucket" >> beam.Map(lambda r: (dedupe_bucket(r.record_id, buckets), r)
                                                ).with_output_types(Tuple[int, Any])
               | "First per window" >> beam.ParDo(_FirstInWindow(self._grace, self._clock)).with_outputs(
                   DEAD, main="records"))
        return {"records": out.records, "dead_letter": out[DEAD]}


class _FirstInWindow(beam.DoFn):
    """The first record of each id in a window; later ones are duplicate_id dead
    letters.

    Input is keyed by dedupe_bucket(id), and the state is the set of ids seen
    per (bucket, window). A processing-time timer, pushed back by every id,
    clears it once no id has arrived for one window length plus the grace
    (expiry_time). So the state holds only the ids of recently active windows,
    whatever the input rate or run length, and the set of keys is fixed.
    (Dataflow also frees a window's state when the window expires; the
    DirectRunner never frees anything by itself.)"""

    SEEN = SetStateSpec("seen", coders.StrUtf8Coder())
    EXPIRY = TimerSpec("expiry", TimeDomain.REAL_TIME)

    def __init__(self, idle_grace_s: float = DEDUPE_IDLE_GRACE_S,
                 clock: Callable[[], Timestamp] = Timestamp.now):
        self._grace = idle_grace_s
        # Processing-time "now"; injectable because a TestStream's processing
        # clock starts at 0, not at the wall clock.
        self._clock = clock

    def process(self, element, window=beam.DoFn.WindowParam, seen=beam.DoFn.StateParam(SEEN),
                expiry=beam.DoFn.TimerParam(EXPIRY)) -> Iterator:
        _, record = element
        if record.record_id in seen.read():
            yield TaggedOutput(DEAD, DeadLetter(
                record_id=record.record_id, pack_key=record.pack_key, stage=Stage.DEDUPE.value,
                error_type=Reason.DUPLICATE_ID.value,
                error_message="id already received in this window; first one wins",
                raw=raw_to_text({"text": record.text, **record.attrs})))
            return
        seen.add(record.record_id)
        expiry.set(expiry_time(self._clock(), window, self._grace))
        yield record

    @on_timer(EXPIRY)
    def expire(self, seen=beam.DoFn.StateParam(SEEN)):
        seen.clear()


def to_json_bytes(row) -> bytes:
    """A result or dead-letter row as a Pub/Sub payload (timestamps as ISO 8601)."""
    return json.dumps(row, default=str, ensure_ascii=False).encode("utf-8")
