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
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Deque, Dict, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.utils.windowed_value import WindowedValue

from transforms import fastjson, lifecycle, progress, registry
from transforms import api_process
from transforms.api_process import ApiProcessError, BatchCalls, Created
from transforms.budget import fitting_prefix, get_budget
from transforms.client import ApiSettings, RetryPolicy, describe_error
from transforms.outcomes import RowContext, Sent, failed_request, now, resolve, usage_of
from transforms.records import Reason, Record, Stage
from transforms.requests import Request, RequestBuilder, Sealed, open_work, requests_of, seal_work

__all__ = ["SubmitBatches", "PollSettings", "SubmittedBatch", "seal_work", "open_work"]

_LOG = logging.getLogger(__name__)
DEAD = "dead_letter"
#: Batch item errors worth one more try: the server's fault, not the request's.
_TRANSIENT_ERRORS = frozenset({"api_error", "overloaded_error", "timeout_error"})
#: A batch round usually ends within the hour: closer than this to --deadline,
#: stragglers (expired / errored items) go through the Messages API instead.
STRAGGLER_WINDOW_S = 3600.0
#: Creates running while the next batch is built: process() waits beyond it, which bounds
#: the requests held to about two batches while still overlapping upload and building.
_CREATES_IN_FLIGHT = 1


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
    ledger_key: Optional[str] = None
    #: Set instead of `requests` and `records` when they are in the ledger's
    #: requests file: the batch then crosses the Reshuffle as a few strings,
    #: and its collector reads them back (as a `collect` job does).
    requests_path: Optional[str] = None
    #: Set instead of `requests` and `records` when the batch was created from
    #: sealed Works (see requests.seal_work): they cross the Reshuffle as the
    #: bytes they already are, and are opened once, by the collector.
    sealed: Tuple[Sealed, ...] = ()

    def loaded(self) -> "SubmittedBatch":
        """This batch with its requests (and packed records) in memory."""
        if self.sealed:
            requests, records = requests_of(self.sealed)
            return dataclasses.replace(self, requests=tuple(requests), records=records, sealed=())
        if self.requests_path is None:
            return self
        requests, records = lifecycle.read_requests(self.requests_path)
        return dataclasses.replace(self, requests=tuple(requests), records=records, requests_path=None)


class _ApiDoFn(beam.DoFn):
    """Base for DoFns that call the Message Batches API (through the API process)."""

    def __init__(self, api: ApiSettings, retry_policy: RetryPolicy,
                 ledger: Optional[lifecycle.LedgerSettings] = None, run_id: str = ""):
        self._calls = BatchCalls(api, retry_policy)
        self._ledger_settings = ledger
        self._run_id = run_id
        self._ledger = None

    def setup(self):
        self._calls.check_key()  # no key: fail here, with the reason, not batch by batch
        api_process.shared()     # start the helper (if not yet) while the bundle gets going
        if self._ledger_settings is not None:
            # Per process (a GcsLedger holds storage clients; it is thread-safe).
            self._ledger = registry.per_process(("ledger", self._ledger_settings.path),
                                                self._ledger_settings.open)

    def _create_batch(self, builder: RequestBuilder, works: Sequence[Any],
                      records: Optional[Dict[str, Record]] = None) -> Tuple[Created, bool, Optional[str]]:
        """(created, reused, ledger key): through the ledger when there is one.
        `records`: the packed records, when `works` are bare Requests (re-asks)."""
        if self._ledger_settings is None:
            return self._calls.create(builder, works), False, None
        return self._calls.submit(self._ledger_settings, self._run_id, builder, works, records)


class _CreateBatches(_ApiDoFn):
    """(key, [Work]) -> SubmittedBatch, or every record dead-lettered on a refusal.

    A Work is a Request, or for packs a (Request, records) pair, usually
    sealed (requests.seal_work). Sealed Works are not opened here: the API
    process opens them to record them in the ledger and write the body (see
    BatchCalls.submit), and the collector to match results.

    Creates run on one background thread per bundle, in arrival order: while
    the API process and the API (or the emulator, on the same cores) handle a
    256 MB body, this worker goes on building the next batch instead of
    waiting. Outputs are emitted in submission order, from process() once
    their create returns and from finish_bundle() for the rest, each in its
    input's window. Metrics and progress are only touched on the bundle's own
    thread.
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
            # Opened here too, to be weighed; the API process still gets the sealed ones.
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
        future = self._pool.submit(self._create_batch, self._builder, works)
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
        except (lifecycle.SubmissionPending, ApiProcessError):
            # Another writer is creating this very batch, or the API process died:
            # let Beam retry the bundle.
            raise
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
    """SubmittedBatch -> result rows + dead letters, streaming the results file.

    For packs, ids the answer failed are re-asked (half packs, then alone) in
    follow-up batches, up to `max_reasks`, each round created only after the
    previous one's results have been read.
    """

    #: Results whose counts are summed here before they reach Beam's counters and the
    #: progress line: passed on per result, five counters (an inc() costs ~0.7 us) and
    #: two progress updates cost a fifth of handling the result.
    _TALLY_EVERY = 1000

    def __init__(self, api, retry_policy, builder: RequestBuilder, ctx: RowContext,
                 poll: PollSettings, max_reasks: int, ledger=None, wait: bool = True, sleep=time.sleep):
        super().__init__(api, retry_policy, ledger, ctx.run_id)
        self._wait = wait
        self._pending = Metrics.counter("claude", "batches_pending")
        self._builder = builder
        self._ctx = ctx
        self._poll = poll
        self._max_reasks = max_reasks
        self._sleep = sleep
        self._succeeded = Metrics.counter("claude", "batch_results_succeeded")
        self._failed = Metrics.counter("claude", "batch_results_failed")
        self._unknown = Metrics.counter("claude", "batch_results_unknown_custom_id")
        self._unreadable = Metrics.counter("claude", "batch_results_unreadable_lines")
        self._reasked = Metrics.counter("claude", "reasked_records")
        self._resubmitted = Metrics.counter("claude", "resubmitted_records")
        self._online = Metrics.counter("claude", "stragglers_sent_online")
        self._invented = Metrics.counter("claude", "invented_ids")
        self._created = Metrics.counter("claude", "batches_created")
        self._input_tokens = Metrics.counter("claude", "input_tokens")
        self._output_tokens = Metrics.counter("claude", "output_tokens")
        self._tally = self._new_tally()
        self._tallied = 0

    def _new_tally(self) -> Dict[Any, float]:
        """Amounts not yet passed on: per Beam counter, and per progress-line name."""
        return {counter: 0 for counter in (self._input_tokens, self._output_tokens, self._succeeded,
                                           self._failed, self._invented, "answered", "cost_usd")}

    def _flush_tally(self) -> None:
        tally, self._tally, self._tallied = self._tally, self._new_tally(), 0
        for target, amount in tally.items():
            if not amount:
                continue
            if isinstance(target, str):
                progress.add(target, amount)
            else:
                target.inc(amount)

    def _wait_until_ended(self, batch_id: str):
        if not self._wait:  # collect job: look once, leave running batches for the next run
            batch = self._calls.retrieve(batch_id)
            return batch if batch.processing_status == "ended" else None
        deadline = time.monotonic() + self._poll.timeout_s
        for interval in self._poll.intervals():
            batch = self._calls.retrieve(batch_id)
            if batch.processing_status == "ended":
                return batch
            if time.monotonic() + interval > deadline:
                return None
            self._sleep(interval)

    def process(self, submitted: SubmittedBatch) -> Iterator:
        try:
            yield from self._collect_rounds(submitted.loaded())
        finally:
            self._flush_tally()

    def _collect_rounds(self, submitted: Optional[SubmittedBatch]) -> Iterator:
        """The batch's results, then those of its re-ask and resubmission rounds."""
        carried: Dict[str, Dict[str, int]] = {}
        while submitted is not None:
            reasks: List[List[str]] = []
            retries: List[Request] = []
            for out in self._collect_one(submitted, carried, reasks, retries):
                yield out
            if not reasks and not retries:
                return
            if retries and self._deadline_near():
                # No time for another batch round: resend the stragglers now, at list price.
                for request in retries:
                    yield from self._send_now(self._builder.again(request), carried)
                retries = []
                if not reasks:
                    return
            attempt = max(r.attempt for r in submitted.requests) + 1
            submitted = yield from self._resubmit(submitted, reasks, attempt, carried, retries)

    def _deadline_near(self) -> bool:
        """True when another batch round would likely end after --deadline."""
        deadline = self._ctx.deadline_at
        return deadline is not None and time.time() + STRAGGLER_WINDOW_S > deadline

    def _send_now(self, request: Request, carried) -> Iterator:
        """One straggler through the Messages API (the same request, billed at list price)."""
        self._online.inc(len(request.items))
        submitted_at = now()
        try:
            message = self._calls.message(self._builder.params(request))
        except Exception as e:  # noqa: BLE001 - a refusal dead-letters the straggler
            sent = Sent(submitted_at=submitted_at, attempts=request.attempt)
            for d in failed_request(self._ctx, request, sent, Stage.SUBMIT, Reason.API_ERROR,
                                    describe_error(e), batch=False, carried=carried):
                yield TaggedOutput(DEAD, d)
            return
        sent = Sent(submitted_at=submitted_at, completed_at=now(), attempts=request.attempt)
        res = resolve(self._ctx, request, sent, message, batch=False, carried=carried, max_reasks=0)
        yield from res.rows
        for d in res.dead:
            yield TaggedOutput(DEAD, d)

    def _collect_one(self, submitted: SubmittedBatch, carried, reasks: List[List[str]],
                     retries: List[Request]) -> Iterator:
        pending: Dict[str, Request] = {r.custom_id: r for r in submitted.requests}
        batch = self._wait_until_ended(submitted.batch_id)
        if batch is None and not self._wait:
            self._pending.inc()
            _LOG.warning("batch %s has not ended; left for the next collect run", submitted.batch_id)
            return
        if batch is None:
            yield from self._dead_all(submitted, pending, carried, Reason.EXPIRED,
                                      f"batch {submitted.batch_id} did not end within {self._poll.timeout_s:.0f} s")
            return
        completed_at = batch.ended_at or now()
        # One Sent per attempt number (it is frozen): all a batch's results share it.
        sents: Dict[int, Sent] = {}
        for entry in self._results(submitted.batch_id):
            request = pending.pop(entry["custom_id"], None)
            if request is None:
                self._unknown.inc()  # not ours, or a repeated line: never written twice
                continue
            sent = sents.get(request.attempt)
            if sent is None:
                sent = sents[request.attempt] = Sent(
                    batch_id=submitted.batch_id, submitted_at=submitted.submitted_at,
                    completed_at=completed_at, attempts=request.attempt)
            yield from self._outcome(request, sent, entry["result"], carried, reasks, retries)
        if pending:
            yield from self._dead_all(submitted, pending, carried, Reason.MISSING_RESULT,
                                      "the batch ended without a result for this request")
        progress.add("batches_open", -1)
        if self._ledger is not None and submitted.ledger_key:
            lifecycle.mark(self._ledger, submitted.ledger_key, "ended")

    def _results(self, batch_id: str) -> Iterator[Dict[str, Any]]:
        """The results file, streamed line by line as plain dicts.

        The SDK's results() builds a pydantic object per line (about 0.4 ms
        each, the largest cost of a 100,000-record batch); the API process
        reads its streaming response of the same endpoint and hands on the bytes.
        A line that is not a JSON object with a custom_id and a result is
        counted and skipped, not fatal: its request then has no result and is
        dead-lettered as missing, like one the batch left out.
        """
        for n, line in enumerate(fastjson.jsonl_lines(self._calls.results(batch_id)), start=1):
            try:
                entry = fastjson.loads(line)
            except ValueError:
                entry = None
            if isinstance(entry, dict) and isinstance(entry.get("custom_id"), str) \
                    and isinstance(entry.get("result"), dict):
                yield entry
                continue
            self._unreadable.inc()
            # The line's length only: its text may hold customer data.
            _LOG.warning("batch %s: results line %d (%d bytes) is not a result; skipped",
                         batch_id, n, len(line))

    def _outcome(self, request: Request, sent: Sent, result: Dict[str, Any], carried, reasks,
                 retries: List[Request]) -> Iterator:
        kind = result["type"]
        if kind == "succeeded":
            message = result["message"]
            usage = usage_of(message)
            res = resolve(self._ctx, request, sent, message, batch=True, carried=carried,
                          max_reasks=self._max_reasks, usage=usage)
            tally = self._tally
            tally[self._input_tokens] += (usage["input_tokens"] + usage["cache_creation_input_tokens"]
                                          + usage["cache_read_input_tokens"])
            tally[self._output_tokens] += usage["output_tokens"]
            tally[self._succeeded] += len(res.rows)
            tally[self._failed] += len(res.dead)
            tally[self._invented] += res.invented
            tally["answered"] += len(res.rows) + len(res.dead)
            tally["cost_usd"] += self._ctx.prices.cost(self._ctx.model, usage, batch=True)
            self._tallied += 1
            if self._tallied >= self._TALLY_EVERY:
                self._flush_tally()
            carried.update(res.carried)
            reasks.extend(res.reasks)
            yield from res.rows
            for d in res.dead:
                yield TaggedOutput(DEAD, d)
            return
        reason = {"errored": Reason.ERRORED, "expired": Reason.EXPIRED,
                  "canceled": Reason.CANCELED}.get(kind, Reason.API_ERROR)
        message = f"batch result {kind}"
        error = result.get("error")
        error_type = None
        if isinstance(error, dict):
            inner = error.get("error", error)
            error_type = inner.get("type")
            message += f": {error_type or ''}: {inner.get('message', '')}"
        if request.attempt == 1 and (kind == "expired" or error_type in _TRANSIENT_ERRORS):
            # Not billed, not the record's fault: resubmitted once, in the next round.
            self._resubmitted.inc(len(request.items))
            retries.append(request)
            return
        self._failed.inc(len(request.items))
        for d in failed_request(self._ctx, request, sent, Stage.COLLECT, reason, message, batch=True,
                                carried=carried):
            yield TaggedOutput(DEAD, d)

    def _resubmit(self, submitted: SubmittedBatch, reasks: List[List[str]], attempt: int, carried,
                  retries: Sequence[Request] = ()):
        """Create the follow-up batch of re-asks and resubmissions; dead-letter them if it is refused."""
        records = submitted.records or {}
        requests = [self._builder.request_for([records[i] for i in group], packed=True, attempt=attempt)
                    for group in reasks]
        requests += [self._builder.again(r) for r in retries]
        self._reasked.inc(sum(len(g) for g in reasks))
        submitted_at = now()
        budget = get_budget(self._ctx.run_id, self._ctx.max_cost_usd)
        if budget is not None:
            fits = fitting_prefix(budget, self._ctx.prices, self._ctx.model, requests, batch=True)
            for request in requests[fits:]:
                for d in failed_request(self._ctx, request, Sent(submitted_at=submitted_at, attempts=attempt),
                                        Stage.SUBMIT, Reason.BUDGET,
                                        f"--max-cost-usd {budget.max_usd:g} reached: not re-asked",
                                        batch=True, carried=carried):
                    yield TaggedOutput(DEAD, d)
            requests = requests[:fits]
            if not requests:
                return None
        try:
            created, reused, key = self._create_batch(self._builder, requests, records)
        except Exception as e:  # noqa: BLE001 - refused re-asks become dead letters
            sent = Sent(submitted_at=submitted_at, attempts=attempt)
            for request in requests:
                for d in failed_request(self._ctx, request, sent, Stage.SUBMIT, Reason.API_ERROR,
                                        describe_error(e), batch=True, carried=carried):
                    yield TaggedOutput(DEAD, d)
            return None
        if not reused:
            self._created.inc()
        return SubmittedBatch(created.id, submitted_at, tuple(requests), records, key)

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


class _LoadSubmission(beam.DoFn):
    """(ledger key, batch_id, requests file) -> SubmittedBatch."""

    def process(self, element) -> Iterator[SubmittedBatch]:
        key, batch_id, path = element
        requests, records = lifecycle.read_requests(path)
        yield SubmittedBatch(batch_id, now(), tuple(requests), records, key)


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
                     | "Load submissions" >> beam.ParDo(_LoadSubmission())
                     | "Spread batches" >> beam.Reshuffle()
                     | "Collect batches" >> beam.ParDo(_CollectBatches(*self._args, wait=False)
                                                       ).with_outputs(DEAD, main="results"))
        return {"results": collected.results, "dead_letter": collected[DEAD]}
