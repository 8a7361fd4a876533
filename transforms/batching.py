"""BatchElements by count, bytes and tokens, per key, with Beam state and timers.

Python's `GroupIntoBatches` bounds a batch by element count only (and by a
buffering time); it cannot bound by bytes or tokens. The Message Batches API
rejects a batch over 256 MB, and a pack must fit a token budget, so this
stateful DoFn bounds all three. State per key is at most one batch: a batch
is flushed as soon as the next element would overflow it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, List, Optional, Tuple, TypeVar

import apache_beam as beam
from apache_beam.coders import coders
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (BagStateSpec, ReadModifyWriteStateSpec, TimerSpec,
                                              on_timer)
from apache_beam.utils.timestamp import Duration, Timestamp

__all__ = ["BatchBounds", "BatchByWeight"]

T = TypeVar("T")

#: Message Batches API hard limits; larger values are refused early.
MAX_BATCH_REQUESTS = 100_000
MAX_BATCH_BYTES = 256 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class BatchBounds:
    """Upper bounds of one batch; None means unbounded on that axis."""

    max_items: int
    max_bytes: Optional[int] = None
    max_tokens: Optional[int] = None
    #: Streaming: flush a batch this long (processing time) after its first element.
    max_buffering_s: Optional[float] = None

    def __post_init__(self):
        if self.max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {self.max_items}")
        for name in ("max_bytes", "max_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")

    def would_overflow(self, items: int, size: int, tokens: int, add_size: int, add_tokens: int) -> bool:
        """True if adding an element to a non-empty batch would break a bound."""
        if items == 0:
            return False  # an element bigger than the bounds still goes, alone
        return (items + 1 > self.max_items
                or (self.max_bytes is not None and size + add_size > self.max_bytes)
                or (self.max_tokens is not None and tokens + add_tokens > self.max_tokens))

    def is_full(self, items: int, size: int, tokens: int) -> bool:
        return (items >= self.max_items
                or (self.max_bytes is not None and size >= self.max_bytes)
                or (self.max_tokens is not None and tokens >= self.max_tokens))


#: (bytes, tokens) of an element.
Weigher = Callable[[Any], Tuple[int, int]]


class _BatchByWeightDoFn(beam.DoFn):
    """Buffers (key, element) pairs in a bag and emits (key, [elements]) batches."""

    BUFFER = BagStateSpec("buffer", coders.PickleCoder())
    #: (items, bytes, tokens) in the buffer: one small state cell read per element.
    WEIGHT = ReadModifyWriteStateSpec(
        "weight", coders.TupleCoder([coders.VarIntCoder()] * 3))
    WINDOW_END = TimerSpec("window_end", TimeDomain.WATERMARK)

    def __init__(self, bounds: BatchBounds, weigh: Weigher, clock: Callable[[], Timestamp] = Timestamp.now):
        self._bounds = bounds
        self._weigh = weigh
        # Processing-time "now" for the buffering timer; injectable because a
        # TestStream's processing clock starts at 0, not at the wall clock.
        self._clock = clock

    def process(self, element: Tuple[Any, Any],
                window=beam.DoFn.WindowParam,
                buffer=beam.DoFn.StateParam(BUFFER),
                weight=beam.DoFn.StateParam(WEIGHT),
                window_end=beam.DoFn.TimerParam(WINDOW_END)) -> Iterator[Tuple[Any, List[Any]]]:
        yield from self._add(element, window, buffer, weight, window_end, None)

    def _add(self, element, window, buffer, weight, window_end, buffering) -> Iterator:
        key, value = element
        add_size, add_tokens = self._weigh(value)
        items, size, tokens = weight.read() or (0, 0, 0)
        if self._bounds.would_overflow(items, size, tokens, add_size, add_tokens):
            yield from self._flush(key, buffer, weight)
            items, size, tokens = 0, 0, 0
        if items == 0:
            window_end.set(window.max_timestamp())
            if buffering is not None:
                buffering.set(self._clock() + Duration(seconds=self._bounds.max_buffering_s))
        buffer.add(value)
        items, size, tokens = items + 1, size + add_size, tokens + add_tokens
        if self._bounds.is_full(items, size, tokens):
            yield from self._flush(key, buffer, weight)
        else:
            weight.write((items, size, tokens))

    @on_timer(WINDOW_END)
    def on_window_end(self, key=beam.DoFn.KeyParam,
                      buffer=beam.DoFn.StateParam(BUFFER),
                      weight=beam.DoFn.StateParam(WEIGHT)):
        yield from self._flush(key, buffer, weight)

    @staticmethod
    def _flush(key, buffer, weight):
        batch = list(buffer.read())
        buffer.clear()
        weight.clear()
        if batch:
            yield key, batch


class _BufferedBatchByWeightDoFn(_BatchByWeightDoFn):
    """The same, plus a processing-time timer: a batch waits at most
    `max_buffering_s` after its first element (streaming). A separate class
    because a real-time timer moves the DirectRunner off its fast FnApi runner,
    which bounded jobs should keep."""

    BUFFERING = TimerSpec("buffering", TimeDomain.REAL_TIME)

    def process(self, element: Tuple[Any, Any],
                window=beam.DoFn.WindowParam,
                buffer=beam.DoFn.StateParam(_BatchByWeightDoFn.BUFFER),
                weight=beam.DoFn.StateParam(_BatchByWeightDoFn.WEIGHT),
                window_end=beam.DoFn.TimerParam(_BatchByWeightDoFn.WINDOW_END),
                buffering=beam.DoFn.TimerParam(BUFFERING)) -> Iterator[Tuple[Any, List[Any]]]:
        yield from self._add(element, window, buffer, weight, window_end, buffering)

    @on_timer(BUFFERING)
    def on_buffering_timeout(self, key=beam.DoFn.KeyParam,
                             buffer=beam.DoFn.StateParam(_BatchByWeightDoFn.BUFFER),
                             weight=beam.DoFn.StateParam(_BatchByWeightDoFn.WEIGHT)):
        yield from self._flush(key, buffer, weight)


class BatchByWeight(beam.PTransform):
    """PCollection[(K, T)] -> PCollection[(K, List[T])], bounded by `bounds`.

    Elements of different keys never share a batch; order inside a batch is
    arrival order. Every element is emitted exactly once (at the latest when
    its window ends).
    """

    def __init__(self, bounds: BatchBounds, weigh: Weigher, clock: Callable[[], Timestamp] = Timestamp.now):
        super().__init__()
        self._bounds = bounds
        self._weigh = weigh
        self._clock = clock

    def expand(self, keyed):
        dofn = (_BufferedBatchByWeightDoFn if self._bounds.max_buffering_s else _BatchByWeightDoFn)
        return keyed | "Buffer and flush" >> beam.ParDo(dofn(self._bounds, self._weigh, self._clock))
