"""The Message Batches route: create -> poll -> stream results, matched by custom_id.

Two DoFns with a fusion break between them: every batch of a bundle is
created before any worker starts waiting on one, so batches are processed by
the API in parallel rather than one after another.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from transforms import retry
from transforms.client import ApiSettings, make_client
from transforms.outcomes import RowContext, Sent, dead_letter, now, single_outcome, usage_of
from transforms.records import Reason, Stage
from transforms.requests import Request, RequestBuilder

__all__ = ["SubmitBatches", "PollSettings", "SubmittedBatch"]

_LOG = logging.getLogger(__name__)
DEAD = "dead_letter"


@dataclasses.dataclass(frozen=True)
class PollSettings:
    """How often to ask whether a batch has ended.

    Against the real API most batches end within an hour, so the interval
    starts at `initial_s` and grows by `factor` up to `max_s`: a nightly job
    makes a few hundred cheap retrieve calls, not thousands.
    """

    initial_s: float = 30.0
    max_s: float = 300.0
    factor: float = 1.5
    timeout_s: float = 25 * 3600.0  # past the API's own 24 h expiry

    def intervals(self) -> Iterator[float]:
        interval = self.initial_s
        while True:
            yield interval
            interval = min(interval * self.factor, self.max_s)


@dataclasses.dataclass(frozen=True)
class SubmittedBatch:
    """A created batch and the requests it holds (to match results by custom_id)."""

    batch_id: str
    submitted_at: dt.datetime
    requests: Tuple[Request, ...]


def batch_payload(builder: RequestBuilder, requests: Sequence[Request]) -> List[Dict[str, Any]]:
    return [{"custom_id": r.custom_id, "params": builder.params(r)} for r in requests]


class _ApiDoFn(beam.DoFn):
    """Base for DoFns that hold an API client: built in setup(), closed in teardown()."""

    def __init__(self, api: ApiSettings, retry_policy: retry.RetryPolicy):
        self._api = api
        self._retry = retry_policy
        self._client = None

    def setup(self):
        self._client = make_client(self._api)

    def teardown(self):
        if self._client is not None:
            self._client.close()
            self._client = None

    def _call(self, fn, *args, **kwargs):
        return retry.call_with_retries(lambda: fn(*args, **kwargs), policy=self._retry)


class _CreateBatches(_ApiDoFn):
    """(key, [Request]) -> SubmittedBatch, or every request dead-lettered on a refusal."""

    def __init__(self, api, retry_policy, builder: RequestBuilder):
        super().__init__(api, retry_policy)
        self._builder = builder
        self._created = Metrics.counter("claude", "batches_created")
        self._sent = Metrics.counter("claude", "batch_requests_sent")

    def process(self, element: Tuple[Any, List[Request]]) -> Iterator:
        _, requests = element
        submitted_at = now()
        try:
            batch = self._call(self._client.messages.batches.create,
                               requests=batch_payload(self._builder, requests))
        except Exception as e:  # noqa: BLE001 - a refused batch dead-letters its records, never crashes the job
            sent = Sent(submitted_at=submitted_at)
            message = retry.describe(e)
            for request in requests:
                for item in request.items:
                    yield TaggedOutput(DEAD, dead_letter(request, item, sent, Stage.SUBMIT,
                                                         Reason.API_ERROR, message))
            return
        self._created.inc()
        self._sent.inc(len(requests))
        _LOG.info("created batch %s with %d requests", batch.id, len(requests))
        yield SubmittedBatch(batch.id, submitted_at, tuple(requests))


class _CollectBatches(_ApiDoFn):
    """SubmittedBatch -> result rows + dead letters, streaming the results file."""

    def __init__(self, api, retry_policy, ctx: RowContext, poll: PollSettings, sleep=time.sleep):
        super().__init__(api, retry_policy)
        self._ctx = ctx
        self._poll = poll
        self._sleep = sleep
        self._succeeded = Metrics.counter("claude", "batch_results_succeeded")
        self._failed = Metrics.counter("claude", "batch_results_failed")
        self._unknown = Metrics.counter("claude", "batch_results_unknown_custom_id")
        self._input_tokens = Metrics.counter("claude", "input_tokens")
        self._output_tokens = Metrics.counter("claude", "output_tokens")

    def _wait_until_ended(self, batch_id: str):
        deadline = time.monotonic() + self._poll.timeout_s
        for interval in self._poll.intervals():
            batch = self._call(self._client.messages.batches.retrieve, batch_id)
            if batch.processing_status == "ended":
                return batch
            if time.monotonic() + interval > deadline:
                return None
            self._sleep(interval)

    def process(self, submitted: SubmittedBatch) -> Iterator:
        pending: Dict[str, Request] = {r.custom_id: r for r in submitted.requests}
        batch = self._wait_until_ended(submitted.batch_id)
        if batch is None:
            yield from self._dead_all(submitted, pending, Reason.EXPIRED,
                                      f"batch {submitted.batch_id} did not end within {self._poll.timeout_s:.0f} s")
            return
        completed_at = batch.ended_at or now()
        for entry in self._call(self._client.messages.batches.results, submitted.batch_id):
            request = pending.pop(entry.custom_id, None)
            if request is None:
                self._unknown.inc()  # not ours, or a duplicate line: never written twice
                continue
            sent = Sent(batch_id=submitted.batch_id, submitted_at=submitted.submitted_at,
                        completed_at=completed_at)
            yield from self._outcome(request, sent, entry.result)
        if pending:
            yield from self._dead_all(submitted, pending, Reason.MISSING_RESULT,
                                      "the batch ended without a result for this request")

    def _outcome(self, request: Request, sent: Sent, result) -> Iterator:
        kind = result.type
        if kind == "succeeded":
            usage = usage_of(result.message)
            self._input_tokens.inc(usage["input_tokens"] + usage["cache_creation_input_tokens"]
                                   + usage["cache_read_input_tokens"])
            self._output_tokens.inc(usage["output_tokens"])
            rows, dead = single_outcome(self._ctx, request, sent, result.message, batch=True)
            self._succeeded.inc(len(rows))
            self._failed.inc(len(dead))
            yield from rows
            for d in dead:
                yield TaggedOutput(DEAD, d)
            return
        reason = {"errored": Reason.ERRORED, "expired": Reason.EXPIRED,
                  "canceled": Reason.CANCELED}.get(kind, Reason.API_ERROR)
        message = f"batch result {kind}"
        error = getattr(result, "error", None)
        if error is not None:
            inner = getattr(error, "error", error)
            message += f": {getattr(inner, 'type', '')}: {getattr(inner, 'message', '')}"
        self._failed.inc(len(request.items))
        for item in request.items:
            yield TaggedOutput(DEAD, dead_letter(request, item, sent, Stage.COLLECT, reason, message))

    def _dead_all(self, submitted: SubmittedBatch, pending: Dict[str, Request], reason: Reason,
                  message: str) -> Iterator:
        sent = Sent(batch_id=submitted.batch_id, submitted_at=submitted.submitted_at)
        for request in pending.values():
            for item in request.items:
                self._failed.inc()
                yield TaggedOutput(DEAD, dead_letter(request, item, sent, Stage.COLLECT, reason, message))


class SubmitBatches(beam.PTransform):
    """PCollection[(key, [Request])] -> {'results': rows, 'dead_letter': DeadLetters}.

    One Message Batch per input element (the batcher bounds its size); the
    results file is streamed, never loaded whole; each line is matched to its
    request by custom_id, and requests without a line are dead-lettered.
    """

    def __init__(self, api: ApiSettings, builder: RequestBuilder, ctx: RowContext,
                 poll: PollSettings = PollSettings(), retry_policy: Optional[retry.RetryPolicy] = None):
        super().__init__()
        self._api = api
        self._builder = builder
        self._ctx = ctx
        self._poll = poll
        self._retry = retry_policy or retry.RetryPolicy()

    def expand(self, batches):
        created = batches | "Create batches" >> beam.ParDo(
            _CreateBatches(self._api, self._retry, self._builder)).with_outputs(DEAD, main="batches")
        collected = (created.batches
                     | "Spread batches" >> beam.Reshuffle()
                     | "Collect batches" >> beam.ParDo(
                         _CollectBatches(self._api, self._retry, self._ctx, self._poll)
                     ).with_outputs(DEAD, main="results"))
        dead = (created[DEAD], collected[DEAD]) | "Merge batch dead letters" >> beam.Flatten()
        return {"results": collected.results, "dead_letter": dead}
