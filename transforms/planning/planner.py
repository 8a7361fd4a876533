"""The cost plan as a library: what a job will cost, and how long it will take,
in every mode, before it runs.

`plan()` reads the input with the job's own normalizer (dead letters are left
out and counted), builds the job's real requests with its own RequestBuilder
and packing, counts their input tokens with the API's `count_tokens` endpoint
(a capped sample of calls; the local estimator when the endpoint cannot be
reached), models prompt caching and rate limits, and prices every mode with
the job's price table. Every number it cannot know (output length, batch
turnaround, rate limits not given) is an assumption the plan states.

Output tokens are the one number the input does not determine. By default the
plan assumes the task's `item_output_tokens` per record (a budget, so an upper
estimate). A *pilot* sends N records, alone and in packs, through the Messages
API and uses the output it really got; it costs what those N records cost.

`python -m pipeline plan` (pipeline/plan.py) is the command-line face.
"""
from __future__ import annotations

import collections
import datetime as dt
from typing import Any, Dict, List, Optional, Tuple

from transforms.batching import BatchBounds
from transforms.api.client import ApiSettings, make_client, wire_schemas
from transforms.api.costs import load_prices
from transforms.modes import MODES, PACKED_MODES
from transforms.io.normalize import FieldMap
from transforms.prompts.outcomes import RowContext
from transforms.process import ProcessSettings
from transforms.prompts.requests import RequestBuilder
from transforms.prompts.task import load_task
from transforms.api.tokens import system_tokens
from transforms.planning.deadline import format_duration, parse_deadline
from transforms.planning.estimate import build_requests, count_request_tokens, mode_plan, run_pilot
from transforms.planning.model import (
    BATCH_BOUND_S, BATCH_QUEUE_LIMIT, BATCH_TYPICAL_S, CACHE_TTL_S, DEFAULT_COUNT_CALLS,
    DEFAULT_LOCAL_PILOT, DEFAULT_SAMPLE, LOWEST_TIER_LIMITS, REAL_BATCH_CACHE_WRITES, REAL_LATENCY_S,
    REAL_OUTPUT_TOKENS_PER_S, STARTUP_S, Assumptions, ModePlan, Plan)
from transforms.planning.sample import read_sample


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

    task = load_task(opts.task).with_overrides(model=_opt(opts, "model"), max_tokens=_opt(opts, "max_tokens"),
                                               text_field=_opt(opts, "text_field"),
                                               id_field=_opt(opts, "id_field"))
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

    read = read_sample(opts.input, fields, _opt(opts, "input_format"), task, sample, sampling)
    scale = read.rows_total / read.rows_sampled if read.rows_sampled else 1.0
    by_mode = build_requests(builder, read.records, settings.pack_bounds())
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
            counted_ratios, counted_systems, made = count_request_tokens(client, builder, variants, count_calls)
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
            measured, pilot_cost, limits_from_headers, sent = run_pilot(
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
    for mode in MODES:
        kinds = by_mode["packed" if mode in PACKED_MODES else "single"]
        m = mode_plan(mode, kinds, scale, ratios, systems, out_per_record, prices, task.model, a,
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
