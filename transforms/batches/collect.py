"""The batch route's API calls (BatchCalls) and collecting created batches
(Collector): wait for each batch to end, stream its results, match them by
custom_id to their requests, re-ask what packs failed.

Free of Beam: batch_api._CollectBatches runs a Collector in a DoFn, and tests
run one with calls that answer from memory. Every call is made in this
process, with the process's shared SDK client (client.shared_client) and the
job's retry policy (tenacity; retry.classify decides what is retried).

A Collector yields tagged items: (MAIN, result row), (DEAD, DeadLetter), and
every COUNT_EVERY results and at the end of a batch (COUNTS, Counts): what
the owner adds to its metrics and progress line (a Beam counter's inc() costs
~0.7 us; passed on per result, five of them cost a fifth of handling it).
"""
from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import logging
import time
from typing import Any, Counter, Dict, Iterator, List, Optional, Sequence, Tuple

from transforms import fastjson
from transforms.batches import lifecycle
from transforms.api import registry
from transforms.api.budget import fitting_prefix, get_budget
from transforms.api.client import ApiSettings, RetryPolicy, describe_error, shared_client
from transforms.prompts.outcomes import RowContext, Sent, failed_request, now, resolve, usage_of
from transforms.records import Reason, Record, Stage
from transforms.prompts.requests import Request, RequestBuilder, SealedWork, requests_of

__all__ = ["BatchCalls", "Created", "Collector", "PollSettings", "SubmittedBatch", "MAIN", "DEAD", "COUNTS",
           "METRIC", "PROGRESS"]

_LOG = logging.getLogger(__name__)
MAIN, DEAD, COUNTS = "main", "dead_letter", "counts"
#: The two kinds of count: a Beam counter (namespace "claude") or a progress-line total.
METRIC, PROGRESS = "metric", "progress"
#: Counts: (METRIC or PROGRESS, name) -> amount.
Counts = Dict[Tuple[str, str], float]
#: Batch item errors worth one more try: the server's fault, not the request's.
_TRANSIENT_ERRORS = frozenset({"api_error", "overloaded_error", "timeout_error"})
#: A batch round usually ends within the hour: closer than this to --deadline,
#: stragglers (expired / errored items) go through the Messages API instead.
STRAGGLER_WINDOW_S = 3600.0
#: Bytes per chunk read from a results file: few reads, little memory.
RESULTS_CHUNK_BYTES = 256 * 1024


@dataclasses.dataclass(frozen=True)
class Created:
    """A batch the API accepted: its id and how many records its requests hold."""

    id: str
    items: int


@dataclasses.dataclass(frozen=True)
class BatchCalls:
    """The Message Batches calls of the batch route, made in this process.

    Settings only (safe to pickle with a DoFn): the client is the process's
    (client.shared_client, built on first use and shared by every DoFn and
    thread), and each call is retried by `retry` (RetryPolicy: tenacity,
    retry.classify). A call that still fails raises the SDK's exception.
    """

    api: ApiSettings
    retry: RetryPolicy

    def client(self):
        return shared_client(self.api)

    def check_key(self) -> None:
        """Raise now, with the reason, if there is no key to send (building the
        client reads it: the environment, or Secret Manager once per process)."""
        self.client()

    def create(self, builder: RequestBuilder, requests: Sequence[Request]) -> Created:
        """Create a batch of `requests` (no ledger)."""
        return Created(self._post(builder, requests).id, _items(requests))

    def create_batch(self, builder: RequestBuilder, works: Sequence[Any],
                     ledger: Optional[lifecycle.LedgerSettings], run_id: str,
                     records: Optional[Dict[str, Record]] = None) -> Tuple[Created, bool, Optional[str]]:
        """(created, reused, ledger key) for `works` (sealed or not; see
        requests.seal_work): through the ledger (lifecycle.submit_once: its
        requests file, the create, its record) when there is one. `records`:
        the packed records when `works` are bare Requests (re-asks). Raises
        lifecycle.SubmissionPending as submit_once does."""
        requests, packed = requests_of(works)
        if ledger is None:
            return self.create(builder, requests), False, None
        batch_id, reused, key = lifecycle.submit_once(
            registry.per_process(("ledger", ledger.path), ledger.open), ledger.path, run_id, builder, requests,
            records if records is not None else packed,
            create=lambda: self._post(builder, requests), cancel=self.cancel)
        return Created(batch_id, _items(requests)), reused, key

    def _post(self, builder: RequestBuilder, requests: Sequence[Request]):
        """The create call; the SDK's MessageBatch.

        The SDK's own client (auth, base URL, errors) with a pre-encoded body:
        messages.batches.create would deep-copy and re-encode the same
        instructions once per request (see RequestBuilder.batch_body). Streamed
        with its length, so the whole body is never in memory; re-iterable, so
        a retry sends it again."""
        from anthropic.types.messages import MessageBatch

        client = self.client()
        body = builder.batch_body_stream(requests)
        return self.retry.call(lambda: client.post(
            "/v1/messages/batches", cast_to=MessageBatch, content=body,
            options={"headers": {"content-type": "application/json", "content-length": str(body.size)}}))

    def cancel(self, batch_id: str) -> None:
        client = self.client()
        self.retry.call(lambda: client.messages.batches.cancel(batch_id))

    def retrieve(self, batch_id: str):
        """The SDK's MessageBatch (id, processing_status, ended_at, ...)."""
        client = self.client()
        return self.retry.call(lambda: client.messages.batches.retrieve(batch_id))

    def message(self, params: Dict[str, Any]) -> Dict[str, Any]:
        """One Messages API call: the message as the API's JSON (a dict)."""
        client = self.client()
        raw = self.retry.call(lambda: client.messages.with_raw_response.create(**params))
        return fastjson.loads(raw.http_response.content)

    def results(self, batch_id: str) -> Iterator[bytes]:
        """The results file of an ended batch, in chunks of JSONL bytes.

        The SDK's results() builds a pydantic object per line (about 0.4 ms
        each, the largest cost of a 100,000-record batch); its streaming
        response of the same endpoint gives the raw bytes at a fraction of that."""
        with self.client().messages.batches.with_streaming_response.results(batch_id) as response:
            yield from response.iter_bytes(RESULTS_CHUNK_BYTES)


def _items(requests: Sequence[Request]) -> int:
    return sum(len(r.items) for r in requests)


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
    sealed: Tuple[SealedWork, ...] = ()

    def loaded(self) -> "SubmittedBatch":
        """This batch with its requests (and packed records) in memory."""
        if self.sealed:
            requests, records = requests_of(self.sealed)
            return dataclasses.replace(self, requests=tuple(requests), records=records, sealed=())
        if self.requests_path is None:
            return self
        requests, records = lifecycle.read_requests(self.requests_path)
        return dataclasses.replace(self, requests=tuple(requests), records=records, requests_path=None)


class Collector:
    """Collects SubmittedBatches into tagged items (see the module doc).

    For packs, ids the answer failed are re-asked (half packs, then alone) in
    follow-up batches, up to `max_reasks`, each round created only after the
    previous one's results have been read. `calls` is a BatchCalls (or
    anything with its retrieve, results, message and create_batch).
    """

    #: Results between two COUNTS items.
    COUNT_EVERY = 1000

    def __init__(self, calls: Any, builder: RequestBuilder, ctx: RowContext, poll: PollSettings,
                 max_reasks: int, ledger: Optional[lifecycle.LedgerSettings] = None, wait: bool = True,
                 sleep=time.sleep):
        self._calls = calls
        self._builder = builder
        self._ctx = ctx
        self._poll = poll
        self._max_reasks = max_reasks
        self._ledger_settings = ledger
        self._wait = wait
        self._sleep = sleep
        self._counts: Counter[Tuple[str, str]] = collections.Counter()
        self._counted = 0

    def _ledger(self):
        # Per process (a GcsLedger holds storage clients; it is thread-safe).
        return registry.per_process(("ledger", self._ledger_settings.path), self._ledger_settings.open)

    def _count(self, name: str, amount: float = 1, kind: str = METRIC) -> None:
        self._counts[(kind, name)] += amount

    def _take_counts(self) -> Iterator[Tuple[str, Counts]]:
        """The COUNTS item of what was counted since the last one (if anything was)."""
        counts, self._counts, self._counted = self._counts, collections.Counter(), 0
        counts = {key: amount for key, amount in counts.items() if amount}
        if counts:
            yield COUNTS, counts

    def collect(self, submitted: SubmittedBatch) -> Iterator[Tuple[str, Any]]:
        """The items of one batch, then of its re-ask and resubmission rounds."""
        yield from self._collect_rounds(submitted.loaded())
        yield from self._take_counts()

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

    def _collect_rounds(self, submitted: Optional[SubmittedBatch]) -> Iterator:
        carried: Dict[str, Dict[str, int]] = {}
        while submitted is not None:
            reasks: List[List[str]] = []
            retries: List[Request] = []
            yield from self._collect_one(submitted, carried, reasks, retries)
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
        self._count("stragglers_sent_online", len(request.items))
        submitted_at = now()
        try:
            message = self._calls.message(self._builder.params(request))
        except Exception as e:  # noqa: BLE001 - a refusal dead-letters the straggler
            sent = Sent(submitted_at=submitted_at, attempts=request.attempt)
            for d in failed_request(self._ctx, request, sent, Stage.SUBMIT, Reason.API_ERROR,
                                    describe_error(e), batch=False, carried=carried):
                yield DEAD, d
            return
        sent = Sent(submitted_at=submitted_at, completed_at=now(), attempts=request.attempt)
        res = resolve(self._ctx, request, sent, message, batch=False, carried=carried, max_reasks=0)
        for row in res.rows:
            yield MAIN, row
        for d in res.dead:
            yield DEAD, d

    def _collect_one(self, submitted: SubmittedBatch, carried, reasks: List[List[str]],
                     retries: List[Request]) -> Iterator:
        pending: Dict[str, Request] = {r.custom_id: r for r in submitted.requests}
        try:
            batch = self._wait_until_ended(submitted.batch_id)
        except Exception as e:  # noqa: BLE001 - only the API's 404 is an outcome; the rest fails the bundle
            if getattr(e, "status_code", None) != 404:
                raise
            _LOG.error("batch %s is unknown to the API (404): dead-lettering its %d requests as %s",
                       submitted.batch_id, len(pending), Reason.BATCH_NOT_FOUND.value)
            yield from self._dead_all(
                submitted, pending, carried, Reason.BATCH_NOT_FOUND,
                f"the ledger names batch {submitted.batch_id}, which the API does not know (deleted, created "
                "with another key or workspace, or its results are past their 29 days); nothing was sent "
                "again: use a new --ledger (or --run-id) to pay for these records again")
            return
        if batch is None and not self._wait:
            self._count("batches_pending")
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
                self._count("batch_results_unknown_custom_id")  # not ours, or a repeated line: never written twice
                continue
            sent = sents.get(request.attempt)
            if sent is None:
                sent = sents[request.attempt] = Sent(
                    batch_id=submitted.batch_id, submitted_at=submitted.submitted_at,
                    completed_at=completed_at, attempts=request.attempt)
            yield from self._outcome(request, sent, entry["result"], carried, reasks, retries)
            if self._counted >= self.COUNT_EVERY:
                yield from self._take_counts()
        if pending:
            yield from self._dead_all(submitted, pending, carried, Reason.MISSING_RESULT,
                                      "the batch ended without a result for this request")
        self._count("batches_open", -1, PROGRESS)
        if self._ledger_settings is not None and submitted.ledger_key:
            lifecycle.mark(self._ledger(), submitted.ledger_key, "ended")

    def _results(self, batch_id: str) -> Iterator[Dict[str, Any]]:
        """The results file, streamed line by line as plain dicts.

        The raw bytes of the results file (BatchCalls.results), not the SDK's
        pydantic objects. A line that is not a JSON object with a custom_id and a result is
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
            self._count("batch_results_unreadable_lines")
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
            counts = self._counts
            counts[(METRIC, "input_tokens")] += (usage["input_tokens"] + usage["cache_creation_input_tokens"]
                                                 + usage["cache_read_input_tokens"])
            counts[(METRIC, "output_tokens")] += usage["output_tokens"]
            counts[(METRIC, "batch_results_succeeded")] += len(res.rows)
            counts[(METRIC, "batch_results_failed")] += len(res.dead)
            counts[(METRIC, "invented_ids")] += res.invented
            counts[(PROGRESS, "answered")] += len(res.rows) + len(res.dead)
            counts[(PROGRESS, "cost_usd")] += self._ctx.prices.cost(self._ctx.model, usage, batch=True)
            self._counted += 1
            carried.update(res.carried)
            reasks.extend(res.reasks)
            for row in res.rows:
                yield MAIN, row
            for d in res.dead:
                yield DEAD, d
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
        if request.attempt == 1 and (kind in ("expired", "canceled") or error_type in _TRANSIENT_ERRORS):
            # Not billed, not the record's fault (a cancel is our own abort, or
            # the user's: rerunning means "finish it"): resubmitted once, in the next round.
            self._count("resubmitted_records", len(request.items))
            retries.append(request)
            return
        self._count("batch_results_failed", len(request.items))
        for d in failed_request(self._ctx, request, sent, Stage.COLLECT, reason, message, batch=True,
                                carried=carried):
            yield DEAD, d

    def _resubmit(self, submitted: SubmittedBatch, reasks: List[List[str]], attempt: int, carried,
                  retries: Sequence[Request] = ()):
        """Create the follow-up batch of re-asks and resubmissions; dead-letter them if it is refused."""
        records = submitted.records or {}
        requests = [self._builder.request_for([records[i] for i in group], packed=True, attempt=attempt)
                    for group in reasks]
        requests += [self._builder.again(r) for r in retries]
        self._count("reasked_records", sum(len(g) for g in reasks))
        submitted_at = now()
        budget = get_budget(self._ctx.run_id, self._ctx.max_cost_usd)
        if budget is not None:
            fits = fitting_prefix(budget, self._ctx.prices, self._ctx.model, requests, batch=True)
            for request in requests[fits:]:
                for d in failed_request(self._ctx, request, Sent(submitted_at=submitted_at, attempts=attempt),
                                        Stage.SUBMIT, Reason.BUDGET,
                                        f"--max-cost-usd {budget.max_usd:g} reached: not re-asked",
                                        batch=True, carried=carried):
                    yield DEAD, d
            requests = requests[:fits]
            if not requests:
                return None
        try:
            created, reused, key = self._calls.create_batch(self._builder, requests, self._ledger_settings,
                                                            self._ctx.run_id, records)
        except Exception as e:  # noqa: BLE001 - refused re-asks become dead letters
            sent = Sent(submitted_at=submitted_at, attempts=attempt)
            for request in requests:
                for d in failed_request(self._ctx, request, sent, Stage.SUBMIT, Reason.API_ERROR,
                                        describe_error(e), batch=True, carried=carried):
                    yield DEAD, d
            return None
        if not reused:
            self._count("batches_created")
        return SubmittedBatch(created.id, submitted_at, tuple(requests), records, key)

    def _dead_all(self, submitted: SubmittedBatch, pending: Dict[str, Request], carried, reason: Reason,
                  message: str) -> Iterator:
        for request in pending.values():
            sent = Sent(batch_id=submitted.batch_id, submitted_at=submitted.submitted_at,
                        attempts=request.attempt)
            self._count("batch_results_failed", len(request.items))
            for d in failed_request(self._ctx, request, sent, Stage.COLLECT, reason, message,
                                    batch=True, carried=carried):
                yield DEAD, d
