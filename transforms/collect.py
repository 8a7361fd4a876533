"""Collecting created batches: wait for each to end, stream its results, match
them by custom_id to their requests, re-ask what packs failed.

Free of Beam, so that the same code runs in a DoFn (batch_api._CollectBatches)
and in the collect process (api_process), which takes some of a bundle's
batches while the job's own process collects the others: a batch's results
cost ~25 us of Python each, and a 2-core machine otherwise collects on one
core while the other waits.

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
import os
import pickle
import time
from typing import Any, Counter, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

from transforms import fastjson, lifecycle, registry
from transforms.budget import fitting_prefix, get_budget
from transforms.client import describe_error
from transforms.outcomes import RowContext, Sent, failed_request, now, resolve, usage_of
from transforms.records import Reason, Record, Stage
from transforms.requests import Request, RequestBuilder, Sealed, requests_of

__all__ = ["Collector", "PollSettings", "SubmittedBatch", "MAIN", "DEAD", "COUNTS", "METRIC", "PROGRESS",
           "offload_plan", "write_items", "read_items"]

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
    #: How many requests the batch holds, when `requests` are not in memory.
    request_count: int = 0

    def loaded(self) -> "SubmittedBatch":
        """This batch with its requests (and packed records) in memory."""
        if self.sealed:
            requests, records = requests_of(self.sealed)
            return dataclasses.replace(self, requests=tuple(requests), records=records, sealed=())
        if self.requests_path is None:
            return self
        requests, records = lifecycle.read_requests(self.requests_path)
        return dataclasses.replace(self, requests=tuple(requests), records=records, requests_path=None)

    def size(self) -> int:
        """Requests in the batch, as far as known without reading its requests
        file (1 when nothing says)."""
        return len(self.requests) or len(self.sealed) or self.request_count or 1


class Collector:
    """Collects SubmittedBatches into tagged items (see the module doc).

    For packs, ids the answer failed are re-asked (half packs, then alone) in
    follow-up batches, up to `max_reasks`, each round created only after the
    previous one's results have been read. `calls` is an api_process.BatchCalls.
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
        batch = self._wait_until_ended(submitted.batch_id)
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
        if request.attempt == 1 and (kind == "expired" or error_type in _TRANSIENT_ERRORS):
            # Not billed, not the record's fault: resubmitted once, in the next round.
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


# ---------------------------------------------------------------------------
# Sharing a bundle's batches with the collect process

#: What a batch the collect process took costs the job, next to collecting it
#: itself: unpickling its items (~5 us a result) and passing them on, against
#: ~25 us of matching, checking and building rows.
OFFLOADED_SHARE = 0.4


def offload_plan(sizes: Sequence[int], share: float = OFFLOADED_SHARE) -> Set[int]:
    """Indices of the batches to hand to the collect process, so that it and
    the job finish at about the same time (greedy, largest batch first; a
    tie goes to the collect process, which starts first).

    A batch taken costs the collect process its size and the job `share` of
    it; a batch kept costs the job its size."""
    job = helper = 0.0
    taken: Set[int] = set()
    for index in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        size = sizes[index]
        if max(job + share * size, helper + size) <= max(job + size, helper):
            taken.add(index)
            job += share * size
            helper += size
        else:
            job += size
    return taken


#: Items per pickle in an items file: per-pickle costs vanish, and reading
#: one back needs little memory.
ITEMS_PER_PICKLE = 500


def write_items(path: str, items: Iterable[Tuple[str, Any]]) -> int:
    """The items into `path`, as consecutive pickles of up to ITEMS_PER_PICKLE; their number."""
    written = 0
    chunk: List[Tuple[str, Any]] = []
    with open(path, "wb") as f:
        for item in items:
            chunk.append(item)
            if len(chunk) >= ITEMS_PER_PICKLE:
                pickle.dump(chunk, f, pickle.HIGHEST_PROTOCOL)
                written += len(chunk)
                chunk = []
        if chunk:
            pickle.dump(chunk, f, pickle.HIGHEST_PROTOCOL)
            written += len(chunk)
    return written


def read_items(path: str) -> Iterator[Tuple[str, Any]]:
    """The items of a file write_items wrote, a pickle at a time; the file is removed after."""
    try:
        with open(path, "rb") as f:
            while True:
                try:
                    chunk = pickle.load(f)
                except EOFError:
                    return
                yield from chunk
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
