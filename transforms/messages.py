"""The Messages route (`sync` and `packed`): rate-limited calls from a bounded thread pool.

Each input element is a list of Works (one record for `sync`, one pack for
`packed`, grouped by BatchElements so a bundle can keep `concurrency` calls in
flight). A process-wide limiter paces calls to the account's RPM/ITPM/OTPM,
a concurrency gate backs off on 529, and tenacity retries what can be
retried. Failed ids of a pack are re-asked (half packs, then alone); a
request the API refuses as too large is split; a spend-cap 429 stops every
further call of this process and dead-letters the rest as `spend_limit`.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import hashlib
import logging
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from transforms import progress
from transforms.api import ratelimit
from transforms.api import registry
from transforms.api import retry
from transforms.api import shedding
from transforms.api.budget import get_budget, worst_case_usd
from transforms.api.client import ApiSettings, RetryPolicy, shared_client, shared_pool
from transforms.prompts.outcomes import Carried, RowContext, Sent, failed_request, now, resolve, usage_of
from transforms.records import Reason, Record, Stage
from transforms.prompts.requests import Request, RequestBuilder

__all__ = ["CallMessages", "MessagesSettings"]

_LOG = logging.getLogger(__name__)
DEAD = "dead_letter"
#: Tagged output of the Works shed to the batch route (--shed-to batch).
SHED = "shed"

#: Works of one element (BatchElements) per worker thread: enough to keep the
#: pool busy between elements without holding many answers in memory.
WORKS_PER_THREAD = 4


@dataclasses.dataclass(frozen=True)
class MessagesSettings:
    """Picklable settings of the Messages route; no secrets."""

    concurrency: int = 8
    max_reasks: int = 2
    limits: Optional[ratelimit.Limits] = None
    redis_url: Optional[str] = None
    burst_seconds: float = ratelimit.DEFAULT_BURST_SECONDS
    #: Records admitted to this process's queue and not yet answered; None:
    #: shedding.default_max_in_flight (CallMessages resolves it).
    max_in_flight: Optional[int] = None
    #: 'wait' (backpressure only), 'batch' or 'dead-letter' (see shedding.decide).
    shed_to: str = "wait"
    #: A record whose attrs[urgent_field] is truthy is never shed.
    urgent_field: Optional[str] = None

    def __post_init__(self):
        if self.shed_to not in shedding.SHED_TO:
            raise ValueError(f"shed_to must be one of {shedding.SHED_TO}, got {self.shed_to!r}")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")

    def budget_key(self, api: ApiSettings, model: str) -> str:
        """One budget per (endpoint, model) -- what the API's limits are keyed by --
        and per setting of the limits, so a later run in the same process with
        other flags gets its own. Hashed so the key (which may reach Redis)
        never holds a URL with credentials."""
        text = f"{api.base_url}|{model}|{self.limits}|{self.concurrency}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


#: The records of one call: one for `sync`, a pack for `packed`.
Work = Tuple[Record, ...]


class _CallMessagesDoFn(beam.DoFn):

    def __init__(self, api: ApiSettings, builder: RequestBuilder, ctx: RowContext,
                 retry_policy: RetryPolicy, settings: MessagesSettings, packed: bool):
        self._api = api
        self._builder = builder
        self._ctx = ctx
        self._retry = retry_policy
        self._s = settings
        self._packed = packed
        self._client = None
        self._pool = None
        self._halted: Optional[Tuple[Reason, str]] = None
        self._lock = threading.Lock()
        # Beam's metrics container is per thread: a counter incremented on a
        # pool thread is never reported. Pool threads tally here; process()
        # reports the tally on the DoFn's own thread.
        self._tally: collections.Counter = collections.Counter()
        self._tally_lock = threading.Lock()
        self._shed = Metrics.counter("claude", "shed_records")

    def setup(self):
        # Per process, not per setup(): the DirectRunner calls setup() for every
        # bundle (see shared_client).
        self._client = shared_client(self._api)
        # One budget per endpoint and model, and per setting of the limits: a
        # later run in the same process with other flags gets its own.
        key = self._s.budget_key(self._api, self._builder.task.model)
        self._pool = shared_pool("claude-call", self._s.concurrency, scope=key)
        self._limiter = ratelimit.get_limiter(key, functools.partial(
            ratelimit.create_limiter, self._s.limits, redis_url=self._s.redis_url, name=key,
            burst_seconds=self._s.burst_seconds))
        self._gate = ratelimit.get_limiter(key + "#gate", functools.partial(
            ratelimit.ConcurrencyGate, self._s.concurrency))
        # One queue per process and budget, like the limiter: every DoFn
        # instance's admitted work counts toward the same bound.
        self._queue = registry.per_process(("in-flight", key), shedding.InFlight)
        self._shared = {False: self._builder.shared_size(False), True: self._builder.shared_size(True)}
        self._cached = {p: self._builder.cached_prefix_tokens(p) for p in (False, True)}

    def teardown(self):
        # The client and the pool belong to the process (shared_client,
        # shared_pool): other bundles and DoFns go on using them.
        self._pool = None
        self._client = None

    def process(self, works: Sequence[Work]) -> Iterator:
        futures = []
        for work in works:
            records = list(work)
            request = self._builder.request_for(records, self._packed,
                                                shared=self._shared[self._packed and len(records) > 1])
            amounts = (1.0,) + self._expected_tokens(request)
            decision = self._queue.admit(len(records), amounts, functools.partial(
                self._decide, size=len(records), amounts=amounts, urgent=self._urgent(records)))
            if decision.verdict is shedding.Verdict.SHED:
                yield from self._shed_work(work, request, decision.why)
                continue
            ticket = shedding.Ticket(self._queue, len(records), amounts)
            futures.append(self._pool.submit(self._solve_admitted, records, request, ticket))
        try:
            for future in concurrent.futures.as_completed(futures):
                rows, dead = future.result()
                self._report()
                yield from rows
                for d in dead:
                    yield TaggedOutput(DEAD, d)
        finally:
            self._report()

    def _add(self, name: str, amount: int = 1) -> None:
        """Count `claude/<name>` from any thread (reported by _report)."""
        if amount:
            with self._tally_lock:
                self._tally[name] += amount

    def _report(self) -> None:
        """Move the pool threads' tally into Beam counters, on the DoFn's thread."""
        with self._tally_lock:
            tally, self._tally = self._tally, collections.Counter()
        for name, amount in tally.items():
            Metrics.counter("claude", name).inc(amount)

    # -- load shedding (shedding.decide is the policy) ------------------------

    def _urgent(self, records: List[Record]) -> bool:
        """A pack is urgent when any of its records is: none of them may be shed."""
        field = self._s.urgent_field
        return bool(field) and any(shedding.is_urgent(r.attrs.get(field)) for r in records)

    def _decide(self, depth: int, pending: shedding.Amounts, *, size: int, amounts: shedding.Amounts,
                urgent: bool) -> shedding.Decision:
        """Called by InFlight.admit under its lock, with the queue as it is now."""
        deadline = self._ctx.deadline_at
        projected = None
        if deadline is not None and self._s.shed_to != "wait" and not urgent \
                and not self._limiter.bootstrapping:
            # The queued work ahead, not yet granted, plus this work.
            projected = self._limiter.estimate_queue_wait(*(p + a for p, a in zip(pending, amounts)))
        return shedding.decide(depth=depth, size=size, max_in_flight=self._s.max_in_flight,
                               projected_wait_s=projected, now=time.time(), deadline_at=deadline,
                               urgent=urgent, shed_to=self._s.shed_to)

    def _shed_work(self, work: Work, request: Request, why: str) -> Iterator:
        """A shed work leaves whole: to the batch route, or to the dead letter as `shed`."""
        self._shed.inc(len(work))
        progress.add("shed", len(work))
        if self._s.shed_to == "batch":
            yield TaggedOutput(SHED, work)
            return
        for d in failed_request(self._ctx, request, Sent(submitted_at=now(), attempts=0), Stage.SUBMIT,
                                Reason.SHED, why, batch=False):
            yield TaggedOutput(DEAD, d)

    def _solve_admitted(self, records: List[Record], request: Request, ticket: shedding.Ticket):
        try:
            return self._solve(records, 1, {}, request=request, ticket=ticket)
        finally:
            ticket.close()  # answered, or failed: its room in the queue is free again

    # -- one request and its consequences (runs on a pool thread) ------------

    def _solve(self, records: List[Record], attempt: int, carried: Carried,
               request: Optional[Request] = None, ticket: Optional[shedding.Ticket] = None):
        rows: List[Dict[str, Any]] = []
        dead = []
        if request is None:
            request = self._builder.request_for(records, self._packed, attempt,
                                                shared=self._shared[self._packed and len(records) > 1])
        submitted_at = now()
        if self._halted:
            reason, why = self._halted
            return rows, failed_request(self._ctx, request, Sent(submitted_at=submitted_at, attempts=attempt),
                                        Stage.SUBMIT, reason, why, batch=False, carried=carried)
        budget = get_budget(self._ctx.run_id, self._ctx.max_cost_usd)
        worst = worst_case_usd(self._ctx.prices, self._ctx.model, request, batch=False) if budget else 0.0
        if budget is not None and not budget.reserve(worst):
            return rows, failed_request(self._ctx, request, Sent(submitted_at=submitted_at, attempts=attempt),
                                        Stage.SUBMIT, Reason.BUDGET,
                                        f"--max-cost-usd {budget.max_usd:g} reached: not sent",
                                        batch=False, carried=carried)
        stats = retry.RetryStats()
        progress.add("submitted", len(request.items))
        try:
            message, request_id = self._send(request, stats, ticket)
        except Exception as e:  # noqa: BLE001 - every failure is classified: split, halt or dead letter
            if budget is not None:
                budget.settle(worst, 0.0)  # an error answer is not billed
            return self._on_failure(request, records, attempt, carried, e, stats, submitted_at)
        finally:
            self._count(stats)
        sent = Sent(request_id=request_id, submitted_at=submitted_at, completed_at=now(),
                    attempts=attempt)
        usage = usage_of(message)
        if budget is not None:
            budget.settle(worst, self._ctx.prices.cost(self._ctx.model, usage, batch=False))
        self._add("input_tokens", usage["input_tokens"] + usage["cache_creation_input_tokens"]
                  + usage["cache_read_input_tokens"])
        self._add("output_tokens", usage["output_tokens"])
        res = resolve(self._ctx, request, sent, message, batch=False, carried=carried,
                      max_reasks=self._s.max_reasks)
        rows += res.rows
        dead += res.dead
        progress.add("answered", len(res.rows) + len(res.dead))
        progress.add("cost_usd", self._ctx.prices.cost(self._ctx.model, usage, batch=False))
        self._add("invented_ids", res.invented)
        by_id = {r.record_id: r for r in records}
        for group in res.reasks:
            self._add("reasked_records", len(group))
            more_rows, more_dead = self._solve([by_id[i] for i in group], attempt + 1, res.carried)
            rows += more_rows
            dead += more_dead
        return rows, dead

    def _expected_tokens(self, request: Request) -> Tuple[float, float]:
        """(input, output) tokens the limiter reserves for a request.

        Reserve what ITPM will count: cached instructions are read, not counted
        (a cache miss is settled as debt after the answer)."""
        return (max(1, request.input_tokens - self._cached[request.packed]),
                self._builder.expected_output_tokens(request))

    def _send(self, request: Request, stats: retry.RetryStats, ticket: Optional[shedding.Ticket] = None):
        params = self._builder.params(request)
        expected_input, expected_output = self._expected_tokens(request)

        def attempt():
            self._add("requests")
            with self._limiter.acquire(expected_input, expected_output) as reservation:
                if ticket is not None:
                    ticket.sent()  # the limiter holds it now: no longer queued ahead of others
                raw = self._client.messages.with_raw_response.create(**params)
                reservation.observe_headers(raw.headers)
                message = raw.parse()
                u = message.usage
                # Cache reads do not count toward the input-tokens-per-minute limit.
                reservation.settle(u.input_tokens + (u.cache_creation_input_tokens or 0), u.output_tokens)
            return message, raw.headers.get("request-id")

        return self._retry.call(attempt, limiter=self._limiter, gate=self._gate, stats=stats)

    def _on_failure(self, request: Request, records: List[Record], attempt: int, carried: Carried,
                    exc: BaseException, stats: retry.RetryStats, submitted_at):
        decision = retry.classify(exc)
        sent = Sent(submitted_at=submitted_at, attempts=attempt)
        splittable = decision.kind is retry.Kind.TOO_LARGE or (
            decision.kind is retry.Kind.FATAL and not decision.halt)
        if splittable and len(records) > 1:
            # Too big, or refused (400): split the pack so one record's problem
            # cannot take its neighbours down with it; a single record then
            # fails alone.
            self._add("split_packs")
            half = len(records) // 2
            rows, dead = [], []
            for part in (records[:half], records[half:]):
                r, d = self._solve(part, attempt + 1, carried)
                rows += r
                dead += d
            return rows, dead
        if decision.kind is retry.Kind.SPEND_LIMIT or decision.halt:
            with self._lock:
                if not self._halted:
                    if decision.kind is retry.Kind.SPEND_LIMIT:
                        self._halted = (Reason.SPEND_LIMIT, f"calls stopped: {decision.reason}; the "
                                        "account cannot take more requests until the limit is raised")
                    else:  # 401/402: no request of this run can succeed
                        self._halted = (Reason.API_ERROR, f"calls stopped: {decision.reason}; check the "
                                        "API key and the account")
                    _LOG.error("%s", self._halted[1])
            reason, why = self._halted
            return [], failed_request(self._ctx, request, sent, Stage.SUBMIT, reason, why,
                                      batch=False, carried=carried)
        return [], failed_request(self._ctx, request, sent, Stage.SUBMIT, Reason.API_ERROR,
                                  decision.reason or type(exc).__name__, batch=False, carried=carried)

    def _count(self, stats: retry.RetryStats):
        self._add("retries", stats.retries)
        self._add("responses_429", stats.by_kind.get(retry.Kind.RATE_LIMITED, 0))
        self._add("responses_529", stats.by_kind.get(retry.Kind.OVERLOADED, 0))
        self._add("throttled_ms", int(stats.slept_s * 1000))


class CallMessages(beam.PTransform):
    """PCollection[Work] -> {'results': rows, 'dead_letter': DeadLetters, 'shed': Works}
    through the Messages API. 'shed' holds the Works shed to the batch route
    (--shed-to batch); it is empty otherwise."""

    def __init__(self, api: ApiSettings, builder: RequestBuilder, ctx: RowContext,
                 retry_policy: RetryPolicy, settings: MessagesSettings, packed: bool,
                 records_per_work: int = 1):
        super().__init__()
        if settings.max_in_flight is None:
            settings = dataclasses.replace(settings, max_in_flight=shedding.default_max_in_flight(
                settings.concurrency, records_per_work))
        self._args = (api, builder, ctx, retry_policy, settings, packed)
        self._concurrency = settings.concurrency

    def expand(self, works):
        per_element = self._concurrency * WORKS_PER_THREAD
        called = (works
                  # No max_batch_duration_secs: that variant is stateful with a
                  # processing-time timer, which pushes the DirectRunner onto its
                  # legacy bundle-based runner.
                  | "Group for the pool" >> beam.BatchElements(min_batch_size=1, max_batch_size=per_element)
                  | "Call Messages API" >> beam.ParDo(_CallMessagesDoFn(*self._args)).with_outputs(
                      DEAD, SHED, main="results"))
        return {"results": called.results, "dead_letter": called[DEAD], "shed": called[SHED]}
