"""The Message Batches route: create -> poll -> stream results, matched by custom_id.

Two DoFns with a fusion break between them: every batch of a bundle is
created before any worker starts waiting on one, so batches are processed by
the API in parallel rather than one after another. The API calls are
collect.py's BatchCalls, made in this process; collecting is its Collector.
"""
from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.utils.windowed_value import WindowedValue

from transforms import progress
from transforms.batches import lifecycle
from transforms.api.budget import fitting_prefix, get_budget
from transforms.api.client import ApiSettings, RetryPolicy, describe_error
from transforms.batches.collect import COUNTS, DEAD, MAIN, METRIC, BatchCalls, Collector, PollSettings, SubmittedBatch
from transforms.prompts.outcomes import RowContext, Sent, failed_request, now
from transforms.records import Reason, Stage
from transforms.prompts.requests import RequestBuilder, open_work, requests_of, seal_work

__all__ = ["SubmitBatches", "CollectBatches", "PollSettings", "SubmittedBatch", "seal_work", "open_work"]

_LOG = logging.getLogger(__name__)
#: Creates running while the next batch is built: process() waits beyond it, which bounds
#: the requests held to about two batches while still overlapping upload and building.
_CREATES_IN_FLIGHT = 1


class _ApiDoFn(beam.DoFn):
    """Base for DoFns that call the Message Batches API (BatchCalls, in this process)."""

    def __init__(self, api: ApiSettings, retry_policy: RetryPolicy,
                 ledger: Optional[lifecycle.LedgerSettings] = None, run_id: str = ""):
        self._calls = BatchCalls(api, retry_policy)
        self._ledger_settings = ledger
        self._run_id = run_id

    def setup(self):
        self._calls.check_key()  # no key: fail here, with the reason, not batch by batch


class _CreateBatches(_ApiDoFn):
    """(key, [Work]) -> SubmittedBatch, or every record dead-lettered on a refusal.

    A Work is a Request, or for packs a (Request, records) pair, usually
    sealed (requests.seal_work). Sealed Works are opened on the create
    thread (BatchCalls.create_batch: the ledger's record, the body), and
    again by the collector to match results when there is no ledger.

    Creates run on one background thread per bundle, in arrival order: while
    the API (or the emulator) receives a 256 MB body, this worker goes on
    building the next batch instead of waiting. Outputs are emitted in
    submission order, from process() once their create returns and from
    finish_bundle() for the rest, each in its input's window. Metrics and
    progress are only touched on the bundle's own thread.
    """

    def __init__(self, api, retry_policy, builder: RequestBuilder, ctx: RowContext, ledger=None):
        super().__init__(api, retry_policy, ledger, ctx.run_id)
        self._builder = builder
        self._ctx = ctx
        self._created = Metrics.counter("claude", "batches_created")
        self._reused = Metrics.counter("claude", "batches_reused")
        self._sent = Metrics.counter("claude", "batch_requests_sent")
        self._pool: Optional[ThreadPoolExecutor] = None
        self._pending: Deque[Tuple[Future, Any, Any, Any, List[Any]]] = deque()

    def start_bundle(self):
        self._pool = None
        self._pending = deque()

    def process(self, element: Tuple[Any, List[Any]], window=beam.DoFn.WindowParam,
                timestamp=beam.DoFn.TimestampParam) -> Iterator:
        works = list(element[1])
        submitted_at = now()
        budget = get_budget(self._ctx.run_id, self._ctx.max_cost_usd)
        if budget is not None:
            # Opened here to be weighed; the create thread opens the sealed ones again.
            requests, _ = requests_of(works)
            # A batch is billed when it ends: its worst case counts from now on.
            fits = fitting_prefix(budget, self._ctx.prices, self._ctx.model, requests, batch=True)
            for request in requests[fits:]:
                for d in failed_request(self._ctx, request, Sent(submitted_at=submitted_at), Stage.SUBMIT,
                                        Reason.BUDGET, f"--max-cost-usd {budget.max_usd:g} reached: not sent",
                                        batch=True):
                    yield TaggedOutput(DEAD, d)
            works, requests = works[:fits], requests[:fits]
            if not requests:
                return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="create-batch")
        future = self._pool.submit(self._calls.create_batch, self._builder, works, self._ledger_settings,
                                   self._run_id)
        self._pending.append((future, window, timestamp, submitted_at, works))
        # Emit what has been created; wait for the oldest beyond _CREATES_IN_FLIGHT.
        while self._pending and (self._pending[0][0].done() or len(self._pending) > _CREATES_IN_FLIGHT):
            yield from self._emit(*self._pending.popleft())

    def finish_bundle(self):
        try:
            while self._pending:
                yield from self._emit(*self._pending.popleft())
        finally:
            self._stop_pool()

    def teardown(self):
        self._stop_pool()  # a bundle that failed in process() never reached finish_bundle

    def _stop_pool(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _emit(self, future: Future, window, timestamp, submitted_at, works: List[Any]) -> Iterator:
        """The outputs of one create, each a WindowedValue in its input's window."""
        def windowed(value):
            return WindowedValue(value, timestamp, (window,))
        try:
            created, reused, key = future.result()
        except lifecycle.SubmissionPending:
            raise  # another writer is creating this very batch: let Beam retry the bundle
        except Exception as e:  # noqa: BLE001 - a refused batch dead-letters its records, never crashes the job
            sent = Sent(submitted_at=submitted_at)
            requests, _ = requests_of(works)
            for request in requests:
                for d in failed_request(self._ctx, request, sent, Stage.SUBMIT, Reason.API_ERROR,
                                        describe_error(e), batch=True):
                    yield TaggedOutput(DEAD, windowed(d))
            return
        progress.add("submitted", created.items)
        progress.add("batches_open")
        if reused:
            self._reused.inc()
        else:
            self._created.inc()
            self._sent.inc(len(works))
            _LOG.info("created batch %s with %d requests", created.id, len(works))
        if key is not None and not reused:
            # This job just wrote the requests file: the collector reads it back,
            # so all of a run's requests are not held between create and collect.
            yield windowed(SubmittedBatch(created.id, submitted_at, (), None, key,
                                          requests_path=lifecycle.requests_path(self._ledger_settings.path, key)))
            return
        if key is not None:
            requests, records = requests_of(works)
            yield windowed(SubmittedBatch(created.id, submitted_at, tuple(requests), records, key))
            return
        yield windowed(SubmittedBatch(created.id, submitted_at, (), None, None, sealed=tuple(works)))


class _CollectBatches(_ApiDoFn):
    """SubmittedBatch -> result rows + dead letters: collect.Collector in a DoFn."""

    def __init__(self, api, retry_policy, builder: RequestBuilder, ctx: RowContext,
                 poll: PollSettings, max_reasks: int, ledger=None, wait: bool = True):
        super().__init__(api, retry_policy, ledger, ctx.run_id)
        # Everything a Collector takes besides its calls.
        self._collector_args = (builder, ctx, poll, max_reasks, ledger, wait)
        self._metrics: Dict[str, Any] = {}

    def process(self, submitted: SubmittedBatch) -> Iterator:
        yield from self._outputs(self._collector().collect(submitted))

    def _collector(self) -> Collector:
        return Collector(self._calls, *self._collector_args)

    def _outputs(self, items: Iterable[Tuple[str, Any]]) -> Iterator:
        """A Collector's items as this DoFn's outputs, its counts added to Beam's
        counters and the progress line."""
        for tag, value in items:
            if tag == COUNTS:
                self._add_counts(value)
                continue
            yield value if tag == MAIN else TaggedOutput(DEAD, value)

    def _add_counts(self, counts) -> None:
        for (kind, name), amount in counts.items():
            if kind == METRIC:
                counter = self._metrics.get(name)
                if counter is None:
                    counter = self._metrics[name] = Metrics.counter("claude", name)
                counter.inc(amount)
            else:
                progress.add(name, amount)


class SubmitBatches(beam.PTransform):
    """PCollection[(key, [Work])] -> {'results': rows, 'dead_letter': DeadLetters}.

    A Work may be sealed (seal_work): the batch route seals them after
    building the requests.

    One Message Batch per input element (the batcher bounds its size); the
    results file is streamed, never loaded whole; each line is matched to its
    request by custom_id, and requests without a line are dead-lettered.

    With a ledger, a submission seen before (a retried bundle, a rerun) reuses
    its batch. lifecycle='submit' creates and records batches and stops there:
    a later CollectBatches job writes their results.
    """

    def __init__(self, api: ApiSettings, builder: RequestBuilder, ctx: RowContext,
                 poll: PollSettings = PollSettings(), retry_policy: Optional[RetryPolicy] = None,
                 max_reasks: int = 2, ledger: Optional[lifecycle.LedgerSettings] = None,
                 lifecycle_stage: str = "all", streaming: bool = False):
        super().__init__()
        self._streaming = streaming
        if lifecycle_stage not in ("all", "submit"):
            raise ValueError(f"SubmitBatches runs lifecycle 'all' or 'submit', not {lifecycle_stage!r}")
        if lifecycle_stage == "submit" and ledger is None:
            raise ValueError("lifecycle 'submit' needs a ledger: the collect job finds batches there")
        self._api = api
        self._builder = builder
        self._ctx = ctx
        self._poll = poll
        self._retry = retry_policy or RetryPolicy()
        self._max_reasks = max_reasks
        self._ledger = ledger
        self._stage = lifecycle_stage

    def expand(self, batches):
        created = batches | "Create batches" >> beam.ParDo(
            _CreateBatches(self._api, self._retry, self._builder, self._ctx, self._ledger)
        ).with_outputs(DEAD, main="batches")
        if self._stage == "submit":
            nothing = created.batches | "No results until collect" >> beam.FlatMap(lambda _: ())
            return {"results": nothing, "dead_letter": created[DEAD]}
        batches = created.batches
        if not self._streaming:
            # Bounded: break fusion so every batch is created before any worker
            # waits on one. Streaming: each flush is its own submission, and the
            # DirectRunner's streaming Reshuffle was seen to hold elements back.
            batches = batches | "Spread batches" >> beam.Reshuffle()
        collected = (batches
                     | "Collect batches" >> beam.ParDo(
                         _CollectBatches(self._api, self._retry, self._builder, self._ctx, self._poll,
                                         self._max_reasks, self._ledger)
                     ).with_outputs(DEAD, main="results"))
        dead = (created[DEAD], collected[DEAD]) | "Merge batch dead letters" >> beam.Flatten()
        return {"results": collected.results, "dead_letter": dead}


def _submission(element: Tuple[str, str, str]) -> SubmittedBatch:
    """(ledger key, batch_id, requests file) -> a SubmittedBatch whose collector
    reads the requests file (they cross the Reshuffle as three strings)."""
    key, batch_id, path = element
    return SubmittedBatch(batch_id, now(), (), None, key, requests_path=path)


class CollectBatches(beam.PTransform):
    """PBegin -> {'results', 'dead_letter'}: the results of batches a submit job
    recorded in the ledger. Batches still running are left (and counted) for
    the next collect; collected ones are never written twice."""

    def __init__(self, open_batches: Sequence[Tuple[str, str, str]], api: ApiSettings,
                 builder: RequestBuilder, ctx: RowContext, ledger: lifecycle.LedgerSettings,
                 retry_policy: Optional[RetryPolicy] = None, max_reasks: int = 2,
                 poll: PollSettings = PollSettings()):
        super().__init__()
        self._open = list(open_batches)
        self._args = (api, retry_policy or RetryPolicy(), builder, ctx, poll, max_reasks, ledger)

    def expand(self, pbegin):
        collected = (pbegin
                     | "Open batches" >> beam.Create(self._open)
                     | "Load submissions" >> beam.Map(_submission)
                     | "Spread batches" >> beam.Reshuffle()
                     | "Collect batches" >> beam.ParDo(_CollectBatches(*self._args, wait=False)
                                                       ).with_outputs(DEAD, main="results"))
        return {"results": collected.results, "dead_letter": collected[DEAD]}
