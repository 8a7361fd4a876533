"""Token and time estimates per mode: the job's real requests, counted by the API's
count_tokens (or the local estimator), an optional pilot for output tokens, and
the rate-limit and batch-turnaround model that turns them into a cost and a wall time."""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import math
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from transforms.prompts import packing
from transforms.batching import BatchBounds
from transforms.api.costs import PriceTable
from transforms.modes import BATCH_MODES
from transforms.records import Record
from transforms.prompts.requests import Request, RequestBuilder
from transforms.api.tokens import estimate_tokens
from transforms.planning.model import Assumptions, ModePlan, RATELIMIT_HEADERS


# ---------------------------------------------------------------------------
# Requests


@dataclasses.dataclass
class _Kind:
    """Requests of one instruction variant (single or packed) of one mode."""

    requests: List[Request] = dataclasses.field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.requests)

    @property
    def records(self) -> int:
        return sum(len(r.items) for r in self.requests)

    @property
    def tokens(self) -> int:
        return sum(r.input_tokens for r in self.requests)

    @property
    def bytes(self) -> int:
        return sum(r.size_bytes for r in self.requests)


def build_requests(builder: RequestBuilder, records: Sequence[Record], bounds: BatchBounds
                    ) -> Dict[str, Dict[str, _Kind]]:
    """{"single": {...}, "packed": {...}}: the requests of unpacked and packed modes."""
    shared = {p: builder.shared_size(p) for p in (False, True)}
    single = _Kind([builder.single(r, shared=shared[False]) for r in records])
    by_key: Dict[str, List[Record]] = collections.defaultdict(list)
    for r in records:
        by_key[r.pack_key].append(r)
    packed = {"single": _Kind(), "packed": _Kind()}
    task = builder.task
    for key in sorted(by_key):
        group = sorted(by_key[key], key=lambda r: r.record_id)  # as _PackRecords does
        for pack in packing.plan_packs(group, bounds.max_items, bounds.max_tokens or 10 ** 12,
                                       lambda r: estimate_tokens(task.render(r))):
            is_pack = len(pack) > 1
            request = builder.request_for(pack, True, shared=shared[is_pack])
            packed["packed" if is_pack else "single"].requests.append(request)
    return {"single": {"single": single}, "packed": packed}


def _spread(items: Sequence[Any], n: int) -> List[Any]:
    """n items evenly spread over the sequence (all when n >= len)."""
    if n >= len(items):
        return list(items)
    if n <= 0:
        return []
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def _count_params(builder: RequestBuilder, request: Request) -> Dict[str, Any]:
    params = builder.params(request)
    params.pop("max_tokens", None)
    return params


def count_request_tokens(client, builder: RequestBuilder, kinds: Mapping[str, _Kind], calls: int
                  ) -> Tuple[Dict[str, float], Dict[str, int], int]:
    """(ratio counted/estimated per variant, system tokens per variant, calls made)."""
    variants = [v for v, k in kinds.items() if k.count]
    ratios: Dict[str, float] = {}
    systems: Dict[str, int] = {}
    made = 0
    per_variant = max(1, (calls - len(variants)) // max(1, len(variants)))
    for variant in variants:
        chosen = _spread(kinds[variant].requests, per_variant)
        counted = estimated = 0
        for request in chosen:
            counted += client.messages.count_tokens(**_count_params(builder, request)).input_tokens
            estimated += request.input_tokens
            made += 1
        ratios[variant] = counted / estimated if estimated else 1.0
        # The cacheable prefix: the same request with and without its instructions.
        params = _count_params(builder, chosen[0])
        full = client.messages.count_tokens(**params).input_tokens
        params.pop("system")
        bare = client.messages.count_tokens(**params).input_tokens
        made += 2
        systems[variant] = max(0, full - bare)
    return ratios, systems, made


def run_pilot(client, builder: RequestBuilder, prices: PriceTable, kinds: Mapping[str, _Kind],
           records: int, concurrency: int) -> Tuple[Dict[str, float], float, Dict[str, int], int]:
    """Send about `records` records per variant; (output tokens per record per variant,
    cost, rate limits from the response headers, records sent)."""
    jobs: List[Tuple[str, Request]] = []
    for variant, kind in kinds.items():
        if not kind.count:
            continue
        if variant == "single":
            jobs += [(variant, r) for r in _spread(kind.requests, records)]
        else:
            n_packs = max(1, math.ceil(records / max(1.0, kind.records / kind.count)))
            jobs += [(variant, r) for r in _spread(kind.requests, n_packs)]

    def send(job):
        variant, request = job
        raw = client.messages.with_raw_response.create(**builder.params(request))
        message = raw.parse()
        return variant, request, message.usage, raw.headers

    out = collections.Counter()
    items = collections.Counter()
    cost = 0.0
    limits: Dict[str, int] = {}
    with concurrent.futures.ThreadPoolExecutor(max(1, min(concurrency, 8))) as pool:
        for variant, request, usage, headers in pool.map(send, jobs):
            out[variant] += usage.output_tokens
            items[variant] += len(request.items)
            cost += prices.cost(builder.task.model, {
                "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
                "cache_creation_input_tokens": usage.cache_creation_input_tokens or 0,
                "cache_read_input_tokens": usage.cache_read_input_tokens or 0}, batch=False)
            for name, header in RATELIMIT_HEADERS.items():
                value = headers.get(header)
                if value and value.isdigit():
                    limits[name] = int(value)
    per_record = {v: out[v] / items[v] for v in items if items[v]}
    return per_record, cost, limits, sum(items.values())


# ---------------------------------------------------------------------------
# Modes


def _messages_wall(n_req: float, itpm_tokens: float, out_tokens: float, a: Assumptions
                   ) -> Tuple[float, str]:
    minutes = {"RPM": n_req / a.rpm, "ITPM": itpm_tokens / a.itpm, "OTPM": out_tokens / a.otpm}
    limit, rate_min = max(minutes.items(), key=lambda kv: kv[1])
    per_call = a.latency_s + (out_tokens / n_req / a.output_tokens_per_s
                              if a.output_tokens_per_s and n_req else 0.0)
    calls_s = n_req * per_call / max(1, a.concurrency)
    if calls_s > rate_min * 60:
        return a.startup_s + calls_s, f"concurrency {a.concurrency}"
    return a.startup_s + rate_min * 60, limit


def mode_plan(mode: str, kinds: Mapping[str, _Kind], scale: float, ratios: Mapping[str, float],
               systems: Mapping[str, int], out_per_record: Mapping[str, float],
               prices: PriceTable, model: str, a: Assumptions, batch_bounds: BatchBounds,
               batch_shards: int) -> ModePlan:
    is_batch = mode in BATCH_MODES
    live = {v: k for v, k in kinds.items() if k.count}
    n = {v: k.count * scale for v, k in live.items()}
    recs = {v: k.records * scale for v, k in live.items()}
    total_in = {v: k.tokens * ratios.get(v, 1.0) * scale for v, k in live.items()}
    out = {v: recs[v] * out_per_record[v] for v in live}
    n_all, out_all = sum(n.values()), sum(out.values())
    batches = 0
    if is_batch and n_all:
        size = sum(k.bytes for k in live.values()) * scale
        shards = max(1, min(batch_shards, math.ceil(n_all)))
        batches = shards * max(math.ceil(n_all / shards / batch_bounds.max_items),
                               math.ceil(size / shards / (batch_bounds.max_bytes or 1 << 62)))

    def cache(writes_of) -> Tuple[Dict[str, float], Dict[str, float]]:
        writes, reads = {}, {}
        for v in live:
            s = systems.get(v, 0)
            w = min(n[v], writes_of(v)) if s else 0
            writes[v], reads[v] = w * s, (n[v] - w) * s
        return writes, reads

    if is_batch:
        writes, reads = cache(lambda v: max(1, batches) * a.batch_cache_writes)
        rounds = max(1, math.ceil(n_all / a.batch_queue_limit))
        wall = a.startup_s + a.batch_typical_s * rounds
        bound = a.startup_s + a.batch_bound_s * rounds
        limited_by = f"batch turnaround ({rounds} round{'s' if rounds > 1 else ''} of the queue)"
    else:
        writes, reads = cache(lambda v: a.first_wave_cache_writes)
        wall, limited_by = _messages_wall(n_all, sum(total_in.values()) - sum(reads.values()), out_all, a)
        # The cache lives 5 minutes after its last hit: sparse requests each write it.
        active = max(wall - a.startup_s, 1e-9)
        sparse = [v for v in live if systems.get(v) and n[v] > 1 and active / n[v] > a.cache_ttl_s]
        if sparse:
            writes, reads = cache(lambda v: n[v] if v in sparse else a.first_wave_cache_writes)
            wall, limited_by = _messages_wall(n_all, sum(total_in.values()) - sum(reads.values()),
                                              out_all, a)
        bound = wall
    usage = {
        "input_tokens": round(sum(total_in[v] - writes[v] - reads[v] for v in live)),
        "cache_creation_input_tokens": round(sum(writes.values())),
        "cache_read_input_tokens": round(sum(reads.values())),
        "output_tokens": round(out_all),
    }
    return ModePlan(mode=mode, requests=round(n_all), records=round(sum(recs.values())),
                    cost_usd=prices.cost(model, usage, batch=is_batch),
                    list_cost_usd=prices.cost(model, usage, batch=False),
                    wall_s=wall, wall_bound_s=bound, batches=batches, limited_by=limited_by, **usage)
