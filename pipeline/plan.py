"""The cost plan: what a job will cost, and how long it will take, in every mode, before it runs.

    python -m pipeline plan --task T --input I [any flag of the job]

The plan reads the input with the job's own normalizer (so dead letters are
left out and counted), builds the job's real requests with its own
RequestBuilder and packing, counts their input tokens with the API's
`count_tokens` endpoint (a capped sample of calls; the local estimator when
the endpoint cannot be reached), models prompt caching and rate limits, and
prices every mode with the job's price table. Every number it cannot know
(output length, batch turnaround, rate limits not given) is an assumption
that the rendered plan states.

Output tokens are the one number the input does not determine. By default
the plan assumes the task's `item_output_tokens` per record (a budget, so an
upper estimate). A *pilot* (`--plan-pilot N`) sends N records, alone and in
packs, through the Messages API and uses the output it really got; it costs
what those N records cost (printed). Against the local emulator the pilot is
free and on by default.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import hashlib
import io
import math
import re
import sys
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from transforms import packing
from transforms.batching import BatchBounds
from transforms.client import ApiSettings, make_client, wire_schemas
from transforms.costs import PriceTable, load_prices
from transforms.normalize import FieldMap
from transforms.outcomes import RowContext
from transforms.process import ProcessSettings
from transforms.records import DeadLetter, Reason, Record
from transforms.requests import Request, RequestBuilder
from transforms.task import Task, TemplateError, load_task
from transforms.tokens import estimate_tokens, system_tokens

__all__ = [
    "Assumptions", "ModePlan", "Plan", "PLAN_MODES", "EXIT_OVER_BUDGET",
    "add_plan_arguments", "validate_plan_options", "parse_deadline", "plan", "render_plan",
    "choose_mode", "budget_problem", "plan_command", "plan_before_run", "count_rows",
    "format_duration",
]

PLAN_MODES = ("sync", "packed", "batch", "packed-batch")
BATCH_MODES = ("batch", "packed-batch")
#: Exit code of `plan` (and of a run) when the plan exceeds --max-cost-usd.
EXIT_OVER_BUDGET = 3

DEFAULT_SAMPLE = 2000
DEFAULT_COUNT_CALLS = 20
#: Records the pilot sends alone and in packs against the emulator (free);
#: against the real API the pilot is off unless --plan-pilot asks for it.
DEFAULT_LOCAL_PILOT = 20
#: anthropic-api.md §4: example lowest-tier limits (configuration, not facts).
LOWEST_TIER_LIMITS = {"rpm": 1_000, "itpm": 2_000_000, "otpm": 400_000}
#: Message Batches: "most finish within 1 h", expire after 24 h.
BATCH_TYPICAL_S = 3600.0
BATCH_BOUND_S = 24 * 3600.0
#: Requests waiting in the batch queue at the lowest tier: more wait for a later round.
BATCH_QUEUE_LIMIT = 200_000
#: Prompt cache lifetime (5-minute TTL, refreshed by every hit).
CACHE_TTL_S = 300.0
#: Real API: time to the first token and generation speed of one call (assumptions).
REAL_LATENCY_S = 1.0
REAL_OUTPUT_TOKENS_PER_S = 100.0
#: Starting the job (reading, grouping) before the first call; a few seconds locally.
STARTUP_S = 10.0
#: Batch requests that write the cache, per batch and instruction variant: the
#: API runs a batch's requests in parallel, so a few miss the cache (assumption).
REAL_BATCH_CACHE_WRITES = 10

_RATELIMIT_HEADERS = {"rpm": "anthropic-ratelimit-requests-limit",
                      "itpm": "anthropic-ratelimit-input-tokens-limit",
                      "otpm": "anthropic-ratelimit-output-tokens-limit"}


# ---------------------------------------------------------------------------
# Flags (registered by pipeline/options.py so the job and `plan` share them)


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of planning, deadline and budget (for ClaudeOptions._add_argparse_args)."""
    group = parser.add_argument_group("plan, deadline and budget (`python -m pipeline plan ...`)")
    group.add_argument("--deadline", default=None,
                       help="When the job must be done: seconds (3600, 90m, 2h, 1h30m), an ISO time "
                            "(2026-11-26T09:00:00Z) or HH:MM (the next such local time). The plan says "
                            "which modes meet it; --mode auto picks the cheapest that does.")
    group.add_argument("--max-cost-usd", dest="max_cost_usd", type=float, default=None,
                       help="Refuse (exit code 3) when the planned cost of the mode to run exceeds this.")
    group.add_argument("--plan-sample", dest="plan_sample", type=int, default=DEFAULT_SAMPLE,
                       help="Records the plan reads and builds requests for; larger inputs are "
                            "counted in full and the plan is scaled to their row count.")
    group.add_argument("--plan-sampling", dest="plan_sampling", choices=("auto", "first", "random"),
                       default="auto",
                       help="How a larger input is sampled. first: the first rows (fast; the rest "
                            "are only counted). random: whole pack keys drawn at random (reads "
                            "every row; packs are planned as full as they will be). auto: random "
                            "with --pack-key-field, else first.")
    group.add_argument("--plan-pilot", dest="plan_pilot", type=int, default=None,
                       help="Records to really send (alone and in packs) to measure output tokens. "
                            f"Default {DEFAULT_LOCAL_PILOT} against the local emulator (free), 0 "
                            "against the real API (then the task's item_output_tokens is assumed).")
    group.add_argument("--plan-count-calls", dest="plan_count_calls", type=int,
                       default=DEFAULT_COUNT_CALLS,
                       help="Most count_tokens calls the plan makes (0: use the local estimator).")
    group.add_argument("--plan-batch-typical-s", dest="plan_batch_typical_s", type=float,
                       default=BATCH_TYPICAL_S,
                       help="Expected turnaround of a Message Batch (the API's bound is 24 h).")


def _opt(opts: Any, name: str, default: Any = None) -> Any:
    try:
        value = getattr(opts, name)
    except AttributeError:
        return default
    return default if value is None else value


def validate_plan_options(opts: Any, now: Optional[dt.datetime] = None) -> Optional[float]:
    """Check the plan flags; returns the deadline in seconds from now (or None)."""
    if _opt(opts, "plan_sample", DEFAULT_SAMPLE) < 1:
        raise ValueError("--plan-sample must be >= 1")
    if _opt(opts, "plan_count_calls", DEFAULT_COUNT_CALLS) < 0:
        raise ValueError("--plan-count-calls must be >= 0")
    if _opt(opts, "plan_pilot", 0) < 0:
        raise ValueError("--plan-pilot must be >= 0")
    if _opt(opts, "plan_batch_typical_s", BATCH_TYPICAL_S) <= 0:
        raise ValueError("--plan-batch-typical-s must be > 0")
    max_cost = _opt(opts, "max_cost_usd")
    if max_cost is not None and max_cost < 0:
        raise ValueError("--max-cost-usd must be >= 0")
    text = _opt(opts, "deadline")
    return None if text is None else parse_deadline(str(text), now)


# ---------------------------------------------------------------------------
# Deadline

_DURATION_RE = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*d)?\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*"
                          r"(?:(\d+(?:\.\d+)?)\s*m(?:in)?)?\s*(?:(\d+(?:\.\d+)?)\s*s?)?\s*$", re.I)
_CLOCK_RE = re.compile(r"^\s*(\d{1,2}):(\d{2})(?::(\d{2}))?\s*$")


def parse_deadline(text: str, now: Optional[dt.datetime] = None) -> float:
    """Seconds from `now` until the deadline `text`.

    Accepts a duration ("3600", "3600s", "90m", "2h", "1h30m", "1d"), an ISO
    8601 time ("2026-11-26T09:00:00Z", "2026-11-26 09:00+01:00"; without a
    zone: now's zone), or a clock time "HH:MM[:SS]" (its next occurrence in
    now's zone, today or tomorrow). `now` defaults to the current local time.
    Raises ValueError for anything else or a time already past.
    """
    if now is None:
        now = dt.datetime.now().astimezone()
    if not text or not str(text).strip():
        raise ValueError("--deadline is empty")
    text = str(text).strip()
    m = _DURATION_RE.match(text)
    if m and any(m.groups()):
        d, h, mi, s = (float(g) if g else 0.0 for g in m.groups())
        seconds = d * 86400 + h * 3600 + mi * 60 + s
        if seconds <= 0:
            raise ValueError(f"--deadline {text!r} must be in the future")
        return seconds
    m = _CLOCK_RE.match(text)
    if m:
        hour, minute, second = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
        if hour > 23 or minute > 59 or second > 59:
            raise ValueError(f"--deadline {text!r} is not a valid time of day")
        target = now.replace(hour=hour, minute=minute, second=second, microsecond=0)
        if target <= now:
            target += dt.timedelta(days=1)
        return (target - now).total_seconds()
    iso = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    try:
        target = dt.datetime.fromisoformat(iso)
    except ValueError:
        raise ValueError(f"--deadline {text!r}: expected seconds (3600, 90m, 2h), an ISO time "
                         "(2026-11-26T09:00:00Z) or HH:MM") from None
    if target.tzinfo is None and now.tzinfo is not None:
        target = target.replace(tzinfo=now.tzinfo)
    elif target.tzinfo is not None and now.tzinfo is None:
        now = now.astimezone()
    seconds = (target - now).total_seconds()
    if seconds <= 0:
        raise ValueError(f"--deadline {text!r} is in the past")
    return seconds


def format_duration(seconds: Optional[float]) -> str:
    """42 s, 7.5 min, 3.2 h, 1.5 d."""
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


# ---------------------------------------------------------------------------
# The plan's data


@dataclasses.dataclass
class Assumptions:
    """What the plan could not measure, and says it assumed."""

    rpm: int
    itpm: int
    otpm: int
    limits_source: str
    concurrency: int
    latency_s: float
    output_tokens_per_s: Optional[float]
    startup_s: float
    batch_typical_s: float
    batch_bound_s: float
    batch_queue_limit: int
    cache_ttl_s: float
    first_wave_cache_writes: int
    batch_cache_writes: int
    local: bool


@dataclasses.dataclass
class ModePlan:
    """One mode: requests, tokens (as the summary counts them), cost, time."""

    mode: str
    requests: int
    records: int
    input_tokens: int                 # uncached input, as usage.input_tokens
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    output_tokens: int
    cost_usd: float
    list_cost_usd: float              # the same tokens without the batch discount
    wall_s: float                     # expected
    wall_bound_s: float               # batch: the API's 24 h bound; Messages: = wall_s
    batches: int = 0
    meets_deadline: Optional[bool] = None
    over_budget: Optional[bool] = None
    limited_by: str = ""

    @property
    def batch(self) -> bool:
        return self.mode in BATCH_MODES


@dataclasses.dataclass
class Plan:
    task: str
    model: str
    input: str
    price_table: str
    rows_total: int
    rows_sampled: int
    sampling: str                     # "all", "first" or "random"
    records: int                      # valid records (scaled)
    dead_letters: int
    dead_letters_by_reason: Dict[str, int]
    token_source: str
    output_source: str
    output_per_record: Dict[str, float]
    cache_note: str
    cached_system_tokens: Dict[str, int]
    pilot_cost_usd: float
    modes: Dict[str, ModePlan]
    assumptions: Assumptions
    notes: List[str] = dataclasses.field(default_factory=list)
    deadline_s: Optional[float] = None
    max_cost_usd: Optional[float] = None
    created_at: str = ""

    @property
    def scale(self) -> float:
        return self.rows_total / self.rows_sampled if self.rows_sampled else 1.0

    def cheapest(self) -> ModePlan:
        return min(self.modes.values(), key=lambda m: (m.cost_usd, m.wall_s))

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready (for summary.json's "plan" and the report)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Plan":
        data = dict(data)
        data["modes"] = {k: ModePlan(**v) for k, v in data["modes"].items()}
        data["assumptions"] = Assumptions(**data["assumptions"])
        return cls(**data)


# ---------------------------------------------------------------------------
# Reading the input (the job's normalizer, a sample, a cheap full count)


@dataclasses.dataclass
class _Sample:
    records: List[Record]
    dead: collections.Counter
    rows_sampled: int
    rows_total: int
    sampling: str
    files: int


def _files(pattern: str) -> List[str]:
    from apache_beam.io.filesystems import FileSystems
    matched = FileSystems.match([pattern])[0].metadata_list
    if not matched:
        raise ValueError(f"--input {pattern!r} matches no file")
    return sorted(m.path for m in matched)


def _rows(path: str, fmt: str, fields: FieldMap) -> Iterator[Any]:
    """Records and DeadLetters of one file, exactly as the job's reader makes them."""
    from apache_beam.io.filesystems import FileSystems
    from transforms.read import _ParseFile
    parser = _ParseFile(fields, fmt)
    with FileSystems.open(path) as f:
        yield from parser._rows_of(f, fmt, path)  # the job's own row loop: same rows, same reasons


def count_rows(path: str, fmt: str) -> int:
    """Rows of one file without parsing them: non-blank lines (JSONL), CSV rows
    (quoted newlines respected), Parquet metadata."""
    from apache_beam.io.filesystems import FileSystems
    with FileSystems.open(path) as f:
        if fmt == "parquet":
            import pyarrow.parquet as pq
            return pq.ParquetFile(f).metadata.num_rows
        if fmt == "csv":
            import csv
            csv.field_size_limit(64 * 1024 * 1024)
            text = io.TextIOWrapper(f, encoding="utf-8", errors="surrogateescape", newline="")
            return max(0, sum(1 for _ in csv.reader(text)) - 1)
        return sum(1 for line in f if line.strip())


def _key_of(item: Any, fields: FieldMap) -> str:
    """What random sampling draws: whole pack keys (so packs in the sample are
    as full as in the input), or single records when there is no pack key."""
    if isinstance(item, DeadLetter):
        return f"{item.pack_key}" if fields.pack_key_field and item.pack_key else f"@{item.source}"
    return item.pack_key if fields.pack_key_field else f"#{item.record_id}"


def _drawn(key: str, fraction: float, seed: int) -> bool:
    digest = hashlib.sha256(f"{seed}|{key}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2 ** 64


def _read_sample(pattern: str, fields: FieldMap, input_format: Optional[str], task: Task,
                 sample: int, sampling: str, seed: int = 0) -> _Sample:
    """Rows of the input as the job reads them: all of them when they fit in
    `sample`, else the first `sample` rows ("first": the other rows are only
    counted) or about `sample` rows drawn by pack key ("random": every row is
    read, whole pack keys are kept so packing is planned as it will run)."""
    from transforms.read import detect_format
    files = _files(pattern)
    dead: collections.Counter = collections.Counter()
    formats: Dict[str, Optional[str]] = {}
    for path in files:
        try:
            formats[path] = detect_format(path, input_format)
        except ValueError:
            formats[path] = None
            dead[Reason.UNREADABLE_FILE.value] += 1
    readable = [p for p in files if formats[p]]
    if sampling == "auto":
        sampling = "random" if fields.pack_key_field else "first"

    def rows_of(path: str) -> Iterator[Tuple[int, Any]]:
        try:
            yield from enumerate(_rows(path, formats[path], fields))
        except Exception:  # noqa: BLE001 - the job makes an unreadable file one dead letter too
            dead[Reason.UNREADABLE_FILE.value] += 1

    picked: List[Tuple[str, int, Any]] = []
    if sampling == "random":
        total = 0
        for path in readable:
            try:
                total += count_rows(path, formats[path])
            except Exception:  # noqa: BLE001 - counted as unreadable below
                pass
        fraction = 1.0 if total <= sample else sample / total
        seen = 0
        for path in readable:
            for index, item in rows_of(path):
                seen += 1
                if fraction >= 1.0 or _drawn(_key_of(item, fields), fraction, seed):
                    picked.append((path, index, item))
        total = seen
        complete = fraction >= 1.0
    else:
        complete = True
        for path in readable:
            for index, item in rows_of(path):
                if len(picked) >= sample:
                    complete = False
                    break
                picked.append((path, index, item))
            if not complete:
                break
        total = len(picked)
        if not complete:
            total = 0
            for path in readable:
                try:
                    total += count_rows(path, formats[path])
                except Exception:  # noqa: BLE001
                    continue
    # Duplicates: the first in (file, position) order wins, as in the job.
    picked.sort(key=lambda p: (p[0], p[1]))
    records: List[Record] = []
    ids = set()
    for _, _, item in picked:
        if isinstance(item, DeadLetter):
            dead[item.error_type] += 1
            continue
        if item.record_id in ids:
            dead[Reason.DUPLICATE_ID.value] += 1
            continue
        ids.add(item.record_id)
        try:
            task.render(item)
        except TemplateError:
            dead[Reason.TEMPLATE_ERROR.value] += 1
            continue
        records.append(item)
    return _Sample(records, dead, len(picked), max(total, len(picked)),
                   "all" if complete else sampling, len(files))


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


def _build_requests(builder: RequestBuilder, records: Sequence[Record], bounds: BatchBounds
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


def _count_tokens(client, builder: RequestBuilder, kinds: Mapping[str, _Kind], calls: int
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


def _pilot(client, builder: RequestBuilder, prices: PriceTable, kinds: Mapping[str, _Kind],
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
            for name, header in _RATELIMIT_HEADERS.items():
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


def _mode_plan(mode: str, kinds: Mapping[str, _Kind], scale: float, ratios: Mapping[str, float],
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


# ---------------------------------------------------------------------------
# The plan


def plan(opts: Any, api_base: Optional[str], local: bool, *, sample: Optional[int] = None,
         sampling: Optional[str] = None, pilot: Optional[int] = None,
         count_calls: Optional[int] = None, deadline_s: Optional[float] = None,
         batch_typical_s: Optional[float] = None, now: Optional[dt.datetime] = None) -> Plan:
    """The plan of the job `opts` describes (ClaudeOptions; keyword arguments
    override the --plan-* flags). `api_base`/`local` as for the job: where
    count_tokens and the pilot go. Raises ValueError/TaskError/PriceError/OSError
    on bad input, like the job."""
    sample = sample or _opt(opts, "plan_sample", DEFAULT_SAMPLE)
    sampling = sampling or _opt(opts, "plan_sampling", "auto")
    count_calls = _opt(opts, "plan_count_calls", DEFAULT_COUNT_CALLS) if count_calls is None else count_calls
    if pilot is None:
        pilot = _opt(opts, "plan_pilot", DEFAULT_LOCAL_PILOT if local else 0)
    if deadline_s is None and _opt(opts, "deadline") is not None:
        deadline_s = parse_deadline(str(opts.deadline), now)
    max_cost = _opt(opts, "max_cost_usd")
    notes: List[str] = []

    task = load_task(opts.task).with_overrides(model=_opt(opts, "model"), max_tokens=_opt(opts, "max_tokens"))
    prices = load_prices(_opt(opts, "prices"))
    prices.price(task.model)
    builder = RequestBuilder(task=task, run_id=_opt(opts, "run_id", "plan"),
                             prompt_cache=_opt(opts, "prompt_cache", True),
                             cache_min_tokens=_opt(opts, "prompt_cache_min_tokens", 1024),
                             wire_schemas=wire_schemas(task))
    fields = FieldMap(id_field=_opt(opts, "id_field", "id"), text_field=_opt(opts, "text_field", "text"),
                      pack_key_field=_opt(opts, "pack_key_field"),
                      max_text_bytes=_opt(opts, "max_text_bytes", 1_000_000))
    ctx = RowContext(run_id="plan", mode="packed", model=task.model, prompt_sha256=task.prompt_sha256,
                     output_schema=task.output_schema, prices=prices)
    settings = ProcessSettings(mode="packed", builder=builder, ctx=ctx, api=ApiSettings(),
                               batch_bounds=BatchBounds(max_items=_opt(opts, "max_requests_per_batch", 100_000),
                                                        max_bytes=_opt(opts, "max_batch_bytes", 256 * 1024 * 1024)),
                               pack_size=_opt(opts, "pack_size", 20),
                               pack_max_input_tokens=_opt(opts, "pack_max_input_tokens", 24_000))

    read = _read_sample(opts.input, fields, _opt(opts, "input_format"), task, sample, sampling)
    scale = read.rows_total / read.rows_sampled if read.rows_sampled else 1.0
    by_mode = _build_requests(builder, read.records, settings.pack_bounds())
    if read.sampling == "first" and fields.pack_key_field:
        notes.append("packed modes were planned from a sample: a pack key has fewer records in the "
                     "sample than in the whole input, so packs are planned smaller (costlier) than "
                     "they will be; --plan-sampling random draws whole pack keys")

    variants = {"single": by_mode["single"]["single"], "packed": by_mode["packed"]["packed"]}
    # Variant "single" of the packed modes (pack keys with one record) uses the same
    # instructions as sync, so counting one set of single requests covers both.
    client = None
    api_note = ""
    if api_base is not None or not local:
        try:
            client = make_client(ApiSettings(base_url=api_base, use_emulator_key=local,
                                             api_key_secret=_opt(opts, "api_key_secret"),
                                             timeout_s=_opt(opts, "request_timeout_s", 120.0)))
        except Exception as e:  # noqa: BLE001 - no key: plan with the estimator
            api_note = f"{type(e).__name__}: {e}"

    # Input tokens: count_tokens on a capped sample, else the estimator.
    ratios = {"single": 1.0, "packed": 1.0}
    systems_est = {v: (system_tokens(builder.system_blocks(v == "packed"))
                       if "cache_control" in builder.system_blocks(v == "packed")[0] else 0)
                   for v in ("single", "packed")}
    systems = dict(systems_est)
    if client is not None and count_calls > 0 and read.records:
        try:
            counted_ratios, counted_systems, made = _count_tokens(client, builder, variants, count_calls)
            ratios.update(counted_ratios)
            for v, s in counted_systems.items():
                if systems_est[v]:
                    systems[v] = s
            agree = ", ".join(f"{v} x{r:.3f}" for v, r in counted_ratios.items())
            token_source = (f"count_tokens endpoint ({made} calls on a spread of requests; "
                            f"counted/estimated: {agree}; applied to every request)")
        except Exception as e:  # noqa: BLE001 - unreachable endpoint: say so, use the estimator
            token_source = (f"local estimator (~4 bytes/token): count_tokens failed "
                            f"({type(e).__name__}: {_short(e)})")
    elif not read.records:
        token_source = "no valid records"
    else:
        why = ("--plan-count-calls 0" if count_calls <= 0 else f"no API client ({api_note})" if api_note
               else "no API")
        token_source = f"local estimator (~4 bytes/token; {why})"

    # Output tokens: a pilot, else the task's budget per record.
    assumed = {v: float(task.item_output_tokens) for v in ("single", "packed")}
    for v, kind in variants.items():
        if kind.count:
            assumed[v] = sum(builder.expected_output_tokens(r) for r in kind.requests) / kind.records
    out_per_record = dict(assumed)
    pilot_cost = 0.0
    limits_from_headers: Dict[str, int] = {}
    output_source = (f"assumed: the task's item_output_tokens = {task.item_output_tokens} per record "
                     "(a budget: real answers are usually shorter, so costs are upper estimates; "
                     "--plan-pilot N measures them)")
    if pilot > 0 and client is not None and read.records:
        try:
            measured, pilot_cost, limits_from_headers, sent = _pilot(
                client, builder, prices, variants, pilot, _opt(opts, "concurrency", 8))
            out_per_record.update(measured)
            shown = ", ".join(f"{out_per_record[v]:.1f} {'alone' if v == 'single' else 'in packs'}"
                              for v in ("single", "packed") if v in measured)
            spent = (f"free on the emulator, ${pilot_cost:.4f} at API prices" if local
                     else f"pilot cost ${pilot_cost:.4f}")
            output_source = (f"measured by a pilot of {sent} records on "
                             f"{'the local emulator' if local else 'the API'} ({shown} tokens per "
                             f"record; {spent}); the task budget item_output_tokens = "
                             f"{task.item_output_tokens} would plan more")
        except Exception as e:  # noqa: BLE001
            output_source += f"; the pilot failed ({type(e).__name__}: {_short(e)})"

    # Rate limits and timing assumptions.
    given = {k: _opt(opts, k) for k in ("rpm", "itpm", "otpm")}
    limits = {}
    by_source: Dict[str, List[str]] = collections.defaultdict(list)
    for k in ("rpm", "itpm", "otpm"):
        if given[k]:
            limits[k] = int(given[k])
            by_source["given by --rpm/--itpm/--otpm"].append(k.upper())
        elif k in limits_from_headers:
            limits[k] = limits_from_headers[k]
            by_source["from the API's rate-limit headers (pilot)"].append(k.upper())
        else:
            limits[k] = LOWEST_TIER_LIMITS[k]
            by_source["defaults of the lowest usage tier (set --rpm/--itpm/--otpm for your account)"].append(k.upper())
    sources = [f"{'/'.join(ks)} {src}" for src, ks in by_source.items()]
    concurrency = _opt(opts, "concurrency", 8)
    if local:
        typical = (batch_typical_s if batch_typical_s is not None
                   else _opt(opts, "emulator_batch_delay_s", 0.0) + 2.0)
        a = Assumptions(rpm=limits["rpm"], itpm=limits["itpm"], otpm=limits["otpm"],
                        limits_source=", ".join(sources), concurrency=concurrency, latency_s=0.0,
                        output_tokens_per_s=None, startup_s=3.0, batch_typical_s=typical,
                        batch_bound_s=typical, batch_queue_limit=BATCH_QUEUE_LIMIT,
                        cache_ttl_s=CACHE_TTL_S, first_wave_cache_writes=1, batch_cache_writes=1,
                        local=True)
    else:
        typical = (batch_typical_s if batch_typical_s is not None
                   else _opt(opts, "plan_batch_typical_s", BATCH_TYPICAL_S))
        a = Assumptions(rpm=limits["rpm"], itpm=limits["itpm"], otpm=limits["otpm"],
                        limits_source=", ".join(sources), concurrency=concurrency,
                        latency_s=REAL_LATENCY_S, output_tokens_per_s=REAL_OUTPUT_TOKENS_PER_S,
                        startup_s=STARTUP_S, batch_typical_s=typical, batch_bound_s=BATCH_BOUND_S,
                        batch_queue_limit=BATCH_QUEUE_LIMIT, cache_ttl_s=CACHE_TTL_S,
                        first_wave_cache_writes=concurrency, batch_cache_writes=REAL_BATCH_CACHE_WRITES,
                        local=False)

    cached = {v: systems[v] for v in ("single", "packed") if systems[v]}
    if cached:
        cache_note = ("the instructions are prompt-cached (" +
                      ", ".join(f"{t:,} tokens {'alone' if v == 'single' else 'packed'}"
                                for v, t in cached.items()) +
                      "): Messages modes write them on the first call" +
                      ("" if a.first_wave_cache_writes == 1 else
                       f"s in flight (up to {a.first_wave_cache_writes})") +
                      f" and read them after, while calls come within {a.cache_ttl_s / 60:.0f} min of "
                      f"each other; batches write them {a.batch_cache_writes}x per batch and read them "
                      "for all other requests")
    else:
        cache_note = ("the instructions are not cached (shorter than --prompt-cache-min-tokens, or "
                      "--no-prompt-cache)")

    modes: Dict[str, ModePlan] = {}
    batch_bounds = settings.batch_bounds
    for mode in PLAN_MODES:
        kinds = by_mode["packed" if mode in ("packed", "packed-batch") else "single"]
        m = _mode_plan(mode, kinds, scale, ratios, systems, out_per_record, prices, task.model, a,
                       batch_bounds, _opt(opts, "batch_shards", 1))
        if deadline_s is not None:
            m.meets_deadline = m.wall_s <= deadline_s
        if max_cost is not None:
            m.over_budget = m.cost_usd > max_cost
        modes[mode] = m

    dead = {k: round(v * scale) for k, v in sorted(read.dead.items())}
    if read.sampling != "all":
        notes.append(f"read {read.rows_sampled:,} of {read.rows_total:,} rows ({read.sampling}); "
                     f"every count is scaled x{scale:,.2f}")
    notes.append("re-asks of failed pack items and retried calls are not planned (none when the "
                 "model answers well)")
    return Plan(task=str(opts.task), model=task.model, input=str(opts.input), price_table=prices.version,
                rows_total=read.rows_total, rows_sampled=read.rows_sampled, sampling=read.sampling,
                records=round(len(read.records) * scale), dead_letters=sum(dead.values()),
                dead_letters_by_reason=dead, token_source=token_source, output_source=output_source,
                output_per_record=out_per_record, cache_note=cache_note, cached_system_tokens=cached,
                pilot_cost_usd=round(pilot_cost, 6), modes=modes, assumptions=a, notes=notes,
                deadline_s=deadline_s, max_cost_usd=max_cost,
                created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))


def _short(e: BaseException, n: int = 160) -> str:
    text = str(e).replace("\n", " ")
    return text if len(text) <= n else text[:n] + "..."


# ---------------------------------------------------------------------------
# Choosing, budgeting, rendering


def choose_mode(plan: Plan, deadline_s: Optional[float] = None) -> Tuple[str, str]:
    """(mode, why): the cheapest mode whose expected wall time meets the
    deadline; without a deadline, the cheapest; when none meets it, the fastest."""
    by_cost = sorted(plan.modes.values(), key=lambda m: (m.cost_usd, m.wall_s))
    cheapest = by_cost[0]
    if deadline_s is None:
        return cheapest.mode, (f"{cheapest.mode} is the cheapest mode (${cheapest.cost_usd:,.4f}, "
                               f"expected {format_duration(cheapest.wall_s)}); no --deadline given")
    ok = [m for m in by_cost if m.wall_s <= deadline_s]
    if not ok:
        fastest = min(by_cost, key=lambda m: (m.wall_s, m.cost_usd))
        return fastest.mode, (f"no mode is expected to finish within the deadline "
                              f"({format_duration(deadline_s)}); {fastest.mode} is the fastest "
                              f"(expected {format_duration(fastest.wall_s)}, ${fastest.cost_usd:,.4f})")
    best = ok[0]
    why = (f"{best.mode} is the cheapest mode expected to finish within the deadline "
           f"({format_duration(deadline_s)}): ${best.cost_usd:,.4f}, expected {format_duration(best.wall_s)}")
    skipped = [m for m in by_cost if m.cost_usd < best.cost_usd]
    if skipped:
        why += "; " + ", ".join(f"{m.mode} (${m.cost_usd:,.4f}) would take ~{format_duration(m.wall_s)}"
                                for m in skipped)
    if best.batch and best.wall_bound_s > deadline_s:
        why += (f"; note: batches usually end within {format_duration(plan.assumptions.batch_typical_s)} "
                f"but the API only guarantees {format_duration(plan.assumptions.batch_bound_s)}")
    return best.mode, why


def budget_problem(plan: Plan, mode: str, max_cost_usd: Optional[float]) -> Optional[str]:
    """A message when `mode` is planned over --max-cost-usd, else None."""
    if max_cost_usd is None:
        return None
    m = plan.modes[mode]
    if m.cost_usd <= max_cost_usd:
        return None
    within = [x.mode for x in sorted(plan.modes.values(), key=lambda x: x.cost_usd)
              if x.cost_usd <= max_cost_usd]
    hint = (f"; within budget: {', '.join(within)}" if within else "; no mode fits this budget")
    return (f"OVER BUDGET: {mode} is planned at ${m.cost_usd:,.4f}, over --max-cost-usd "
            f"${max_cost_usd:,.4f}{hint}")


def render_plan(plan: Plan) -> str:
    """The plan for a person: what was read, how it was counted, every mode side by side."""
    a = plan.assumptions
    lines = [f"plan: {plan.task} on {plan.input}",
             f"  model {plan.model}, price table {plan.price_table}"]
    if plan.sampling == "all":
        lines.append(f"  input rows      {plan.rows_total:>10,}  (all read)")
    else:
        how = "the first rows" if plan.sampling == "first" else "rows of randomly drawn pack keys"
        lines.append(f"  input rows      {plan.rows_total:>10,}  (sample: {plan.rows_sampled:,} rows, {how}; "
                     f"counts scaled x{plan.scale:,.2f})")
    lines.append(f"  records         {plan.records:>10,}")
    lines.append(f"  dead letters    {plan.dead_letters:>10,}  (not sent, not billed)")
    for reason, n in plan.dead_letters_by_reason.items():
        lines.append(f"    {reason:<22}{n:>8,}")
    wrap = lambda label, text: _wrap(f"  {label:<16}", text)  # noqa: E731
    lines += wrap("input tokens", plan.token_source)
    lines += wrap("output tokens", plan.output_source)
    lines += wrap("prompt cache", plan.cache_note)
    lines += wrap("rate limits", f"{a.rpm:,} RPM, {a.itpm:,} ITPM, {a.otpm:,} OTPM ({a.limits_source}); "
                                 f"--concurrency {a.concurrency}")
    if a.local:
        lines += wrap("timing", "local emulator: no simulated latency; batches end after "
                                "--emulator-batch-delay-s (+ polling)")
    else:
        lines += wrap("timing", f"{a.latency_s:.1f} s per call + {a.output_tokens_per_s:.0f} output "
                                f"tokens/s; batches: typically {format_duration(a.batch_typical_s)}, "
                                f"at most {format_duration(a.batch_bound_s)}")
    if plan.deadline_s is not None:
        lines.append(f"  deadline        in {format_duration(plan.deadline_s)}")
    if plan.max_cost_usd is not None:
        lines.append(f"  budget          ${plan.max_cost_usd:,.4f} (--max-cost-usd)")
    lines.append("")
    head = (f"  {'mode':<13}{'requests':>10}{'input':>12}{'cache write':>13}{'cache read':>13}"
            f"{'output':>11}{'cost':>11}  {'wall time':<22}")
    if plan.deadline_s is not None:
        head += f"{'deadline':<10}"
    lines.append(head)
    cheapest = plan.cheapest().mode
    sync_cost = plan.modes["sync"].cost_usd if "sync" in plan.modes else None
    for m in plan.modes.values():
        wall = format_duration(m.wall_s)
        if m.batch and m.wall_bound_s > m.wall_s:
            wall = f"~{wall} (<= {format_duration(m.wall_bound_s)})"
        row = (f"  {m.mode:<13}{m.requests:>10,}{m.input_tokens:>12,}{m.cache_creation_input_tokens:>13,}"
               f"{m.cache_read_input_tokens:>13,}{m.output_tokens:>11,}{_money(m.cost_usd):>11}  {wall:<22}")
        if plan.deadline_s is not None:
            row += f"{'meets' if m.meets_deadline else 'MISSES':<10}"
        marks = []
        if m.mode == cheapest:
            marks.append("cheapest")
        if sync_cost and m.mode != "sync" and sync_cost > 0:
            marks.append(f"-{(1 - m.cost_usd / sync_cost) * 100:.0f}% vs sync")
        if m.over_budget:
            marks.append("OVER BUDGET")
        lines.append(row + ", ".join(marks))
    if plan.pilot_cost_usd and not a.local:
        lines.append(f"  (the pilot itself cost ${plan.pilot_cost_usd:,.4f})")
    for note in plan.notes:
        lines += _wrap("  note: ", note)
    return "\n".join(lines)


def _money(usd: float) -> str:
    return f"${usd:,.4f}" if usd < 100 else f"${usd:,.2f}"


def _wrap(prefix: str, text: str, width: int = 100) -> List[str]:
    import textwrap
    return textwrap.wrap(text, width=width, initial_indent=prefix,
                         subsequent_indent=" " * len(prefix)) or [prefix.rstrip()]


# ---------------------------------------------------------------------------
# Commands


def plan_command(argv: List[str], out=None, err=None) -> int:
    """`python -m pipeline plan ...`: print the plan; exit 0, 2 (bad usage) or
    3 (the requested mode, or the one --mode auto chose, is over --max-cost-usd)."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from pipeline import options as options_mod
    from pipeline.run import EXIT_OK, EXIT_USAGE, _announce_emulator, _use_emulator
    from transforms.costs import PriceError
    from transforms.task import TaskError

    out = out or sys.stdout
    err = err or sys.stderr
    if "-h" in argv or "--help" in argv:
        parser = options_mod.help_parser()
        parser.prog = "python -m pipeline plan"
        if not any(a.dest == "max_cost_usd" for a in parser._actions):
            add_plan_arguments(parser)
        parser.print_help(out)
        return EXIT_OK
    argv, extra = _split_plan_args(argv)
    opts = PipelineOptions(argv).view_as(options_mod.ClaudeOptions)
    opts_view = _WithExtra(opts, extra)
    try:
        if not opts.task or not opts.input:
            raise ValueError("--task and --input are required")
        deadline_s = validate_plan_options(opts_view)
    except ValueError as e:
        print(f"error: {e}", file=err)
        return EXIT_USAGE
    local = _use_emulator(opts)
    with contextlib.ExitStack() as stack:
        api_base = opts.api_base
        if local:
            import emulator
            emu = stack.enter_context(emulator.running(batch_delay_s=_opt(opts, "emulator_batch_delay_s", 0.0)))
            api_base = emu.base_url
            _announce_emulator(api_base, explicit=opts.api_base == options_mod.LOCAL)
        try:
            p = plan(opts_view, api_base, local, deadline_s=deadline_s)
        except (ValueError, TaskError, PriceError, OSError) as e:
            print(f"error: {e}", file=err)
            return EXIT_USAGE
    print(render_plan(p), file=out)
    mode = _opt(opts_view, "mode", "batch")
    if mode == "auto":
        mode, why = choose_mode(p, deadline_s)
        print(f"\n  --mode auto would run: {mode} ({why})", file=out)
    else:
        print(f"\n  --mode {mode}: ${p.modes[mode].cost_usd:,.4f}, expected "
              f"{format_duration(p.modes[mode].wall_s)}", file=out)
    problem = budget_problem(p, mode, _opt(opts_view, "max_cost_usd"))
    if problem:
        print(f"error: {problem}", file=err)
        print(f"  {problem}", file=out)
        return EXIT_OVER_BUDGET
    return EXIT_OK


def plan_before_run(opts: Any, api_base: Optional[str], local: bool, *, always: bool = False,
                    err=None, refuse_over_budget: bool = True) -> Tuple[Optional[Plan], Optional[int]]:
    """For run.py, after the emulator is up and before resolve_job.

    When --mode auto, --deadline or --max-cost-usd is given (or `always`):
    plan; resolve `auto` into opts.mode; print the plan and the choice to
    stderr (not when only `always` asked for it). Returns (plan or None, exit
    code to stop with, or None to go on): 2 bad flag, 3 over budget.

    No pilot unless --plan-pilot asks for one: the pilot's calls would go to
    the job's own API (or emulator) and be billed there.
    """
    err = err or sys.stderr
    mode = _opt(opts, "mode", "batch")
    asked = mode == "auto" or _opt(opts, "deadline") is not None or _opt(opts, "max_cost_usd") is not None
    if not asked and not always:
        return None, None
    try:
        deadline_s = validate_plan_options(opts)
    except ValueError as e:
        print(f"error: {e}", file=err)
        return None, 2
    p = plan(opts, api_base, local, deadline_s=deadline_s, pilot=_opt(opts, "plan_pilot", 0))
    if asked:
        print(render_plan(p), file=err)
    if mode == "auto":
        mode, why = choose_mode(p, deadline_s)
        opts.mode = mode
        print(f"  --mode auto: running {mode} ({why})", file=err)
    elif deadline_s is not None and not p.modes[mode].meets_deadline:
        print(f"warning: {mode} is expected to take {format_duration(p.modes[mode].wall_s)}, past the "
              f"deadline (in {format_duration(deadline_s)})", file=err)
    problem = budget_problem(p, mode, _opt(opts, "max_cost_usd"))
    if problem and refuse_over_budget:
        print(f"error: {problem}; nothing was sent", file=err)
        return p, EXIT_OVER_BUDGET
    if problem:
        print(f"warning: {problem}; the run stops sending at the cap and dead-letters the rest "
              "as 'budget'", file=err)
    return p, None


# `plan` works before options.py registers its flags: they are parsed here too.
_PLAN_FLAGS = {"--deadline": ("deadline", str), "--max-cost-usd": ("max_cost_usd", float),
               "--plan-sample": ("plan_sample", int), "--plan-sampling": ("plan_sampling", str),
               "--plan-pilot": ("plan_pilot", int), "--plan-count-calls": ("plan_count_calls", int),
               "--plan-batch-typical-s": ("plan_batch_typical_s", float)}


def _split_plan_args(argv: List[str]) -> Tuple[List[str], Dict[str, Any]]:
    rest, extra = [], {}
    i = 0
    mode_auto = False
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in _PLAN_FLAGS:
            if not eq:
                i += 1
                value = argv[i] if i < len(argv) else ""
            dest, kind = _PLAN_FLAGS[name]
            try:
                extra[dest] = kind(value)
            except ValueError:
                raise SystemExit(f"error: {name} {value!r} is not a valid {kind.__name__}")
        elif name == "--mode" and (value if eq else (argv[i + 1] if i + 1 < len(argv) else "")) == "auto":
            mode_auto = True
            i += 0 if eq else 1
        else:
            rest.append(arg)
        i += 1
    if mode_auto:
        extra["mode"] = "auto"
    return rest, extra


class _WithExtra:
    """Options with the plan flags layered on top (when options.py lacks them)."""

    def __init__(self, opts: Any, extra: Mapping[str, Any]):
        self._opts = opts
        self._extra = dict(extra)

    def __getattr__(self, name: str) -> Any:
        if name in self._extra:
            return self._extra[name]
        return getattr(self._opts, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            self._extra[name] = value
