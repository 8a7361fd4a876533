"""ProcessWithClaude: the public composite, Records in, result rows and dead letters out."""
from __future__ import annotations

import dataclasses
import zlib
from typing import Iterator, Optional

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from transforms.batch_api import PollSettings, SubmitBatches
from transforms.batching import BatchBounds, BatchByWeight
from transforms.client import ApiSettings, RetryPolicy
from transforms.outcomes import RowContext
from transforms.records import DeadLetter, Reason, Record, Stage
from transforms.requests import Request, RequestBuilder
from transforms.task import TemplateError

__all__ = ["ProcessWithClaude", "ProcessSettings"]

DEAD = "dead_letter"


@dataclasses.dataclass(frozen=True)
class ProcessSettings:
    """Everything ProcessWithClaude needs besides the records. Picklable, no secrets."""

    mode: str
    builder: RequestBuilder
    ctx: RowContext
    api: ApiSettings
    batch_bounds: BatchBounds
    batch_shards: int = 1
    poll: PollSettings = PollSettings()
    retry: RetryPolicy = RetryPolicy()


class _BuildRequests(beam.DoFn):
    """Record -> Request (one record each); a template that cannot render is a dead letter."""

    def __init__(self, builder: RequestBuilder):
        self._builder = builder
        self._shared = None

    def setup(self):
        # The shared part of every request is measured once per worker.
        self._shared = self._builder.shared_size(packed=False)

    def process(self, record: Record) -> Iterator:
        try:
            yield self._builder.single(record, shared=self._shared)
        except TemplateError as e:
            yield TaggedOutput(DEAD, DeadLetter(
                record_id=record.record_id, pack_key=record.pack_key, stage=Stage.RENDER.value,
                error_type=Reason.TEMPLATE_ERROR.value, error_message=str(e)))


def shard_of(request: Request, shards: int) -> int:
    """Stable shard of a request (crc32, not hash(): stable across processes)."""
    return zlib.crc32(request.custom_id.encode("ascii")) % shards


def _weigh(request: Request):
    return request.size_bytes, request.input_tokens


class ProcessWithClaude(beam.PTransform):
    """PCollection[Record] -> {'results': PCollection[dict], 'dead_letter': PCollection[DeadLetter]}.

    Every input record ends in exactly one of the two outputs.
    """

    def __init__(self, settings: ProcessSettings):
        super().__init__()
        self._s = settings

    def expand(self, records):
        s = self._s
        if s.mode != "batch":
            raise ValueError(f"mode {s.mode!r} is not supported yet")
        requests = records | "Build requests" >> beam.ParDo(
            _BuildRequests(s.builder)).with_outputs(DEAD, main="requests")
        shards = s.batch_shards
        submitted = (requests.requests
                     | "Key by shard" >> beam.Map(lambda r: (shard_of(r, shards), r))
                     | "Batch requests" >> BatchByWeight(s.batch_bounds, _weigh)
                     | "Submit batches" >> SubmitBatches(s.api, s.builder, s.ctx, s.poll, s.retry))
        dead = ((requests[DEAD], submitted["dead_letter"])
                | "Merge processing dead letters" >> beam.Flatten())
        return {"results": submitted["results"], "dead_letter": dead}
