"""The streaming dedupe (DropRepeatedIds) under TestStream: first copy of an id
per window wins, later copies are duplicate_id dead letters, and the state of a
window is dropped by its expiry timer (so state stays bounded on a long run)."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import ElementEvent, TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window
from apache_beam.utils.timestamp import Timestamp

from transforms.pubsub_source import DEDUPE_BUCKETS, DropRepeatedIds, dedupe_bucket, expiry_time
from transforms.records import Record


def _rec(record_id: str, text: str = "t") -> Record:
    return Record(record_id=record_id, pack_key="p", text=text)


def _at(record_id: str, t: float, text: str = "t"):
    return window.TimestampedValue(_rec(record_id, text), t)


def _run(stream, expected_kept, expected_dupes, buckets=DEDUPE_BUCKETS):
    """Runs the stream through DropRepeatedIds in 10 s windows; checks what is kept
    (id, text) and what is dead-lettered (id), and one-in-one-out."""
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    n_in = sum(len(e.timestamped_values) for e in stream._events if isinstance(e, ElementEvent))
    # One in, one out: the expectations hold every input exactly once, and
    # equal_to below checks each output holds exactly its share (no extras).
    assert n_in == len(expected_kept) + len(expected_dupes)
    with TestPipeline(options=options) as p:
        out = (p | stream
               | beam.WindowInto(window.FixedWindows(10))
               | DropRepeatedIds(buckets=buckets))
        kept = out["records"] | "kept" >> beam.Map(lambda r: (r.record_id, r.text))
        dead = out["dead_letter"] | "dead" >> beam.Map(lambda d: (d.record_id, d.error_type, d.stage))
        assert_that(kept, equal_to(expected_kept), label="kept ok")
        assert_that(dead, equal_to([(i, "duplicate_id", "dedupe") for i in expected_dupes]), label="dead ok")


def test_first_copy_wins_within_a_window_and_the_next_window_starts_fresh():
    stream = (TestStream().advance_watermark_to(0)
              .add_elements([_at("a", 1, "first"), _at("b", 2), _at("a", 3, "second")])
              .advance_watermark_to(10)                     # window [0, 10) expires
              .add_elements([_at("a", 11, "next window")])  # a new window: not a duplicate
              .advance_watermark_to_infinity())
    _run(stream, [("a", "first"), ("b", "t"), ("a", "next window")], ["a"])


def test_ids_sharing_a_bucket_are_told_apart():
    # One bucket: every id shares the key; only equal ids are duplicates.
    stream = (TestStream().advance_watermark_to(0)
              .add_elements([_at("x", 1), _at("y", 2), _at("x", 3), _at("z", 4), _at("y", 5)])
              .advance_watermark_to_infinity())
    _run(stream, [("x", "t"), ("y", "t"), ("z", "t")], ["x", "y"], buckets=1)


def test_state_is_dropped_when_the_window_expires():
    # "a" of [0, 10) is seen; the watermark passes the window's end, so the
    # expiry timer clears the window's ids. A late copy of "a" for that same
    # window then finds no state and is kept. Without the timer the state
    # would live on (and the late copy would be dead-lettered): this is what
    # keeps the state bounded on a long run.
    stream = (TestStream().advance_watermark_to(0)
              .add_elements([_at("a", 1, "on time")])
              .advance_watermark_to(25)
              .add_elements([_at("a", 2, "late copy")])
              .advance_watermark_to_infinity())
    _run(stream, [("a", "on time"), ("a", "late copy")], [])


def test_before_expiry_a_copy_is_still_a_duplicate():
    # Same as above but the watermark stops short of the window's end.
    stream = (TestStream().advance_watermark_to(0)
              .add_elements([_at("a", 1, "on time")])
              .advance_watermark_to(9)
              .add_elements([_at("a", 2, "copy")])
              .advance_watermark_to_infinity())
    _run(stream, [("a", "on time")], ["a"])


def test_dedupe_bucket_is_stable_and_in_range():
    assert dedupe_bucket("rec-1") == dedupe_bucket("rec-1")
    # crc32, not hash(): the same in every process (a literal pins it)
    assert dedupe_bucket("rec-1", 1 << 32) == 0x72ad6c2f
    assert {dedupe_bucket(f"id-{i}") for i in range(5000)} == set(range(DEDUPE_BUCKETS))
    assert dedupe_bucket("naïve \udcff") in range(DEDUPE_BUCKETS)  # odd text still hashes


def test_expiry_time_is_the_window_end_plus_lateness():
    assert expiry_time(Timestamp(10)) == Timestamp(10)
    assert expiry_time(Timestamp(10), 5) == Timestamp(15)
