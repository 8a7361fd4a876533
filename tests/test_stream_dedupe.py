"""The streaming dedupe (DropRepeatedIds) under TestStream: first copy of an id
per window wins, later copies are duplicate_id dead letters, and the ids of a
(bucket, window) are dropped by a processing-time timer once none has arrived
for a window length plus the grace (so state stays bounded on a long run)."""
from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import ElementEvent, TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window
from apache_beam.utils.timestamp import Timestamp

from transforms.io.pubsub import DEDUPE_BUCKETS, DropRepeatedIds, dedupe_bucket, expiry_time

GRACE_S = 30  # the tests' idle grace; windows are 10 s, so ids expire 40 s after the last one


def _zero_clock():
    # TestStream's processing clock starts at 0 (Beam fact: not the wall clock)
    return Timestamp(0)
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
               | DropRepeatedIds(buckets=buckets, idle_grace_s=GRACE_S, clock=_zero_clock))
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


@pytest.mark.parametrize("idle_s, expected, dead", [
    (41, [("a", "first"), ("a", "copy")], []),   # after the expiry: the copy is kept
    (39, [("a", "first")], ["a"]),                # before it: still a duplicate
])
def test_ids_are_dropped_after_the_idle_expiry(idle_s, expected, dead):
    # "a" is seen at processing time 0: its ids expire at 0 + 10 s window + 30 s
    # grace. After that a copy of "a" in the same window finds no state and is
    # kept. Without the timer the ids would live forever (the copy would be
    # dead-lettered): this is what keeps the state bounded on a long run.
    stream = (TestStream().advance_watermark_to(0)
              .add_elements([_at("a", 1, "first")])
              .advance_processing_time(idle_s)
              .add_elements([_at("a", 2, "copy")])
              .advance_watermark_to_infinity())
    _run(stream, expected, dead)


def test_a_late_copy_is_still_a_duplicate_when_the_window_already_ended():
    # The DirectRunner's Pub/Sub watermark is the wall clock: under a backlog
    # every record is late. An event-time expiry would have dropped "a" when
    # the watermark passed 10, and let its copy through.
    stream = (TestStream().advance_watermark_to(0)
              .add_elements([_at("a", 1, "first")])
              .advance_watermark_to(25)
              .add_elements([_at("a", 2, "late copy")])
              .advance_watermark_to_infinity())
    _run(stream, [("a", "first")], ["a"])


def test_dedupe_bucket_is_stable_and_in_range():
    assert dedupe_bucket("rec-1") == dedupe_bucket("rec-1")
    # crc32, not hash(): the same in every process (a literal pins it)
    assert dedupe_bucket("rec-1", 1 << 32) == 0x72ad6c2f
    assert {dedupe_bucket(f"id-{i}") for i in range(5000)} == set(range(DEDUPE_BUCKETS))
    assert dedupe_bucket("naïve \udcff") in range(DEDUPE_BUCKETS)  # odd text still hashes


def test_expiry_time_is_now_plus_the_window_length_plus_the_grace():
    w = window.IntervalWindow(Timestamp(20), Timestamp(30))
    assert expiry_time(Timestamp(100), w, 60) == Timestamp(170)
    assert expiry_time(Timestamp(100), w, 0) == Timestamp(110)
