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

from transforms.client import ApiSettings, RetryPolicy, describe_error, make_client
from transforms.outcomes import RowContext, Sent, failed_request, now, resolve, usage_of
from transforms.records import Reason, Record, Stage
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
    """A created batch and the requests it holds (to match results by custom_id).

    records: the packed records by id, kept only for packs, whose failed ids
    are re-asked in a follow-up batch (a single record is never re-asked).
    """

    batch_id: str
    submitted_at: dt.datetime
    requests: Tuple[Request, ...]
    records: Optional[Dict[str, Record]] = None


def batch_payload(builder: RequestBuilder, requests: Sequence[Request]) -> List[Dict[str, Any]]:
    return [{"custom_id": r.custom_id, "params": builder.params(r)} for r in requests]


class _ApiDoFn(beam.DoFn):
    """Base for DoFns that hold an API client: built in setup(), closed in teardown()."""

    def __init__(self, api: ApiSettings, retry_policy: RetryPolicy):
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
        return self._retry.call(lambda: fn(*args, **kwargs))


class _CreateBatches(_ApiDoFn):
    """(key, [Work]) -> SubmittedBatch, or every record dead-lettered on a refusal.

    A Work is a Request, or for packs a (Request, records) pair.
    """

    def __init__(self, api, retry_policy, builder: RequestBuilder, ctx: RowContext):
        super().__init__(api, retry_policy)
        self._builder = builder
        self._ctx = ctx
        self._created = Metrics.counter("claude", "batches_created")
        self._sent = Metrics.counter("claude", "batch_requests_sent")

    def process(self, element: Tuple[Any, List[Any]]) -> Iterator:
        _, works = element
        requests = [w[0] if isinstance(w, tuple) else w for w in works]
        records = {r.record_id: r for w in works if isinstance(w, tuple) for r in w[1]} or None
        submitted_at = now()
        try:
            batch = self._call(self._client.messages.batches.create,
                               requests=batch_payload(self._builder, requests))
        except Exception as e:  # noqa: BLE001 - a refused batch dead-letters its records, never crashes the job
            sent = Sent(submitted_at=submitted_at)
            for request in requests:
                for d in failed_request(self._ctx, request, sent, Stage.SUBMIT, Reason.API_ERROR,
                                        describe_error(e), batch=True):
                    yield TaggedOutput(DEAD, d)
            return
        self._created.inc()
        self._sent.inc(len(requests))
        _LOG.info("created batch %s with %d requests", batch.id, len(requests))
        yield SubmittedBatch(batch.id, submitted_at, tuple(requests), records)


class _CollectBatches(_ApiDoFn):
    """SubmittedBatch -> result rows + dead letters, streaming the results file.

    For packs, ids the answer failed are re-asked (half packs, then alone) in
    follow-up batches, up to `max_reasks`, each round created only after the
    previous one's results have been read.
    """

    def __init__(self, api, retry_policy, builder: RequestBuilder, ctx: RowContext,
                 poll: PollSettings, max_reasks: int, sleep=time.sleep):
        super().__init__(api, retry_policy)
        self._builder = builder
        self._ctx = ctx
        self._poll = poll
        self._max_reasks = max_reasks
        self._sleep = sleep
        self._succeeded = Metrics.counter("claude", "batch_results_succeeded")
        self._failed = Metrics.counter("claude", "batch_results_failed")
        self._unknown = Metrics.counter("claude", "batch_results_unknown_custom_id")
        self._reasked = Metrics.counter("claude", "reasked_records")
        self._invented = Metrics.counter("claude", "invented_ids")
        self._created = Metrics.counter("claude", "batches_created")
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
        carried: Dict[str, Dict[str, int]] = {}
        while submitted is not None:
            reasks: List[List[str]] = []
            for out in self._collect_one(submitted, carried, reasks):
                yield out
            if not reasks:
                return
            attempt = max(r.attempt for r in submitted.requests) + 1
            submitted = yield from self._resubmit(submitted, reasks, attempt, carried)

    def _collect_one(self, submitted: SubmittedBatch, carried, reasks: List[List[str]]) -> Iterator:
        pending: Dict[str, Request] = {r.custom_id: r for r in submitted.requests}
        batch = self._wait_until_ended(submitted.batch_id)
        if batch is None:
            yield from self._dead_all(submitted, pending, carried, Reason.EXPIRED,
                                      f"batch {submitted.batch_id} did not end within {self._poll.timeout_s:.0f} s")
            return
        completed_at = batch.ended_at or now()
        for entry in self._call(self._client.messages.batches.results, submitted.batch_id):
            request = pending.pop(entry.custom_id, None)
            if request is None:
                self._unknown.inc()  # not ours, or a repeated line: never written twice
                continue
            sent = Sent(batch_id=submitted.batch_id, submitted_at=submitted.submitted_at,
                        completed_at=completed_at, attempts=request.attempt)
            yield from self._outcome(request, sent, entry.result, carried, reasks)
        if pending:
            yield from self._dead_all(submitted, pending, carried, Reason.MISSING_RESULT,
                                      "the batch ended without a result for this request")

    def _outcome(self, request: Request, sent: Sent, result, carried, reasks) -> Iterator:
        kind = result.type
        if kind == "succeeded":
            usage = usage_of(result.message)
            self._input_tokens.inc(usage["input_tokens"] + usage["cache_creation_input_tokens"]
                                   + usage["cache_read_input_tokens"])
            self._output_tokens.inc(usage["output_tokens"])
            res = resolve(self._ctx, request, sent, result.message, batch=True, carried=carried,
                          max_reasks=self._max_reasks)
            self._succeeded.inc(len(res.rows))
            self._failed.inc(len(res.dead))
            self._invented.inc(res.invented)
            carried.update(res.carried)
            reasks.extend(res.reasks)
            yield from res.rows
            for d in res.dead:
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
        for d in failed_request(self._ctx, request, sent, Stage.COLLECT, reason, message, batch=True,
                                carried=carried):
            yield TaggedOutput(DEAD, d)

    def _resubmit(self, submitted: SubmittedBatch, reasks: List[List[str]], attempt: int, carried):
        """Create the follow-up batch of re-asks; dead-letter them if it is refused."""
        records = submitted.records or {}
        requests = [self._builder.request_for([records[i] for i in group], packed=True, attempt=attempt)
                    for group in reasks]
        self._reasked.inc(sum(len(g) for g in reasks))
        submitted_at = now()
        try:
            batch = self._call(self._client.messages.batches.create,
                               requests=batch_payload(self._builder, requests))
        except Exception as e:  # noqa: BLE001 - refused re-asks become dead letters
            sent = Sent(submitted_at=submitted_at, attempts=attempt)
            for request in requests:
                for d in failed_request(self._ctx, request, sent, Stage.SUBMIT, Reason.API_ERROR,
                                        describe_error(e), batch=True, carried=carried):
                    yield TaggedOutput(DEAD, d)
            return None
        self._created.inc()
        return SubmittedBatch(batch.id, submitted_at, tuple(requests), records)

    def _dead_all(self, submitted: SubmittedBatch, pending: Dict[str, Request], carried, reason: Reason,
                  message: str) -> Iterator:
        for request in pending.values():
            sent = Sent(batch_id=submitted.batch_id, submitted_at=submitted.submitted_at,
                        attempts=request.attempt)
            self._failed.inc(len(request.items))
            for d in failed_request(self._ctx, request, sent, Stage.COLLECT, reason, message,
                                    batch=True, carried=carried):
                yield TaggedOutput(DEAD, d)


class SubmitBatches(beam.PTransform):
    """PCollection[(key, [Request])] -> {'results': rows, 'dead_letter': DeadLetters}.

    One Message Batch per input element (the batcher bounds its size); the
    results file is streamed, never loaded whole; each line is matched to its
    request by custom_id, and requests without a line are dead-lettered.
    """

    def __init__(self, api: ApiSettings, builder: RequestBuilder, ctx: RowContext,
                 poll: PollSettings = PollSettings(), retry_policy: Optional[RetryPolicy] = None,
                 max_reasks: int = 2):
        super().__init__()
        self._api = api
        self._builder = builder
        self._ctx = ctx
        self._poll = poll
        self._retry = retry_policy or RetryPolicy()
        self._max_reasks = max_reasks

    def expand(self, batches):
        created = batches | "Create batches" >> beam.ParDo(
            _CreateBatches(self._api, self._retry, self._builder, self._ctx)).with_outputs(DEAD, main="batches")
        collected = (created.batches
                     | "Spread batches" >> beam.Reshuffle()
                     | "Collect batches" >> beam.ParDo(
                         _CollectBatches(self._api, self._retry, self._builder, self._ctx, self._poll,
                                         self._max_reasks)
                     ).with_outputs(DEAD, main="results"))
        dead = (created[DEAD], collected[DEAD]) | "Merge batch dead letters" >> beam.Flatten()
        return {"results": collected.results, "dead_letter": dead}
