"""The streaming batcher's flushes under TestStream: by size, by buffering
time (processing-time timer, injected clock), at the end of the window, and
what happens to late data."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window
from apache_beam.utils.timestamp import Timestamp

from transforms.batching import BatchBounds, BatchByWeight


def _zero_clock():
    # TestStream's processing clock starts at 0 (Beam fact: not the wall clock)
    return Timestamp(0)


def _run(stream, bounds, expected):
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with TestPipeline(options=options) as p:
        out = (p | stream
               | beam.WindowInto(window.FixedWindows(10), allowed_lateness=0)
               | beam.Map(lambda v: ("k", v))
               | BatchByWeight(bounds, lambda v: (1, 1), clock=_zero_clock)
               | beam.Map(lambda kv: sorted(kv[1])))
        assert_that(out, equal_to(expected))


def test_size_flush():
    stream = (TestStream().advance_watermark_to(0)
              .add_elements([window.TimestampedValue(i, 1) for i in range(5)])
              .advance_watermark_to(10)            # the rest ([4]) goes at the window's end
              .advance_watermark_to_infinity())
    _run(stream, BatchBounds(max_items=2, max_buffering_s=1000), [[0, 1], [2, 3], [4]])


def test_time_flush_before_the_window_ends():
    stream = (TestStream().advance_watermark_to(0)
              .add_elements([window.TimestampedValue("a", 1)])
              .advance_processing_time(5)          # past max_buffering_s: flushed alone
              .add_elements([window.TimestampedValue("b", 2)])
              .advance_watermark_to_infinity())
    _run(stream, BatchBounds(max_items=100, max_buffering_s=2), [["a"], ["b"]])


def test_window_end_flush():
    stream = (TestStream().advance_watermark_to(0)
              .add_elements([window.TimestampedValue("a", 1), window.TimestampedValue("b", 2)])
              .advance_watermark_to(10)            # window [0, 10) ends: flushed together
              .add_elements([window.TimestampedValue("c", 11)])
              .advance_watermark_to(20)
              .advance_watermark_to_infinity())
    _run(stream, BatchBounds(max_items=100, max_buffering_s=1000), [["a", "b"], ["c"]])


def test_late_data_is_flushed_alone_never_mixed_into_another_window():
    stream = (TestStream().advance_watermark_to(0)
              .add_elements([window.TimestampedValue("a", 1)])
              .advance_watermark_to(25)            # window [0, 10) closed and flushed
              .add_elements([window.TimestampedValue("late", 2), window.TimestampedValue("c", 21)])
              .advance_watermark_to(30)
              .advance_watermark_to_infinity())
    # State is per key and window: the late record of [0, 10) gets a batch of
    # its own (its window's timer is already due), never c's batch of [20, 30).
    # Nothing is dropped silently.
    _run(stream, BatchBounds(max_items=100, max_buffering_s=1000), [["a"], ["late"], ["c"]])
