"""From an API answer to result rows and dead letters: pure functions.

Shared by every route (Messages and Message Batches), so a record's row looks
the same whichever way it was asked."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections import abc
from typing import Any, Callable, Dict, List, Mapping, Optional

from transforms import fastjson
from transforms.prompts import answers
from transforms.prompts.packing import share_usage
from transforms.api.costs import PriceTable
from transforms.io.normalize import display_pack_key, safe_optional
from transforms.records import DeadLetter, Reason, Stage
from transforms.prompts.requests import Item, Request
from transforms.io.schema import arrow_converter

USAGE_KEYS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


@dataclasses.dataclass(frozen=True)
class RowContext:
    """What every row of a run shares."""

    run_id: str
    mode: str
    model: str
    prompt_sha256: str
    output_schema: Optional[Mapping[str, Any]]
    prices: PriceTable
    #: --max-cost-usd: no request is sent whose worst case would pass it.
    max_cost_usd: Optional[float] = None
    #: --deadline as epoch seconds: near it, stragglers of a batch go through
    #: the Messages API rather than wait for another batch.
    deadline_at: Optional[float] = None
    #: Where the answers come from (no credentials): "local-emulator" for the
    #: bundled emulator, so synthetic rows can never pass for real ones.
    api_base: str = "https://api.anthropic.com"


@dataclasses.dataclass(frozen=True)
class Sent:
    """Where a request went and when: provenance of its rows."""

    batch_id: Optional[str] = None
    request_id: Optional[str] = None
    submitted_at: Optional[dt.datetime] = None
    completed_at: Optional[dt.datetime] = None
    attempts: int = 1


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _is_mapping(value: Any) -> bool:
    """isinstance(value, abc.Mapping), with a plain dict (every batch result) answered
    by the C check: an ABC check costs ~0.4 us, and this runs several times per result."""
    return isinstance(value, dict) or isinstance(value, abc.Mapping)


def message_text(message: Any) -> str:
    """Concatenated text blocks of an SDK Message (or its dict form)."""
    content = message["content"] if _is_mapping(message) else message.content
    parts = []
    for block in content or ():
        is_map = _is_mapping(block)
        kind = block["type"] if is_map else block.type
        if kind == "text":
            parts.append(block["text"] if is_map else block.text)
    return "".join(parts)


def usage_of(message: Any) -> Dict[str, Any]:
    usage = message["usage"] if _is_mapping(message) else message.usage
    get = usage.get if _is_mapping(usage) else (lambda k, d=None: getattr(usage, k, d))
    out: Dict[str, Any] = {k: int(get(k, 0) or 0) for k in USAGE_KEYS}
    out["service_tier"] = get("service_tier", None)
    return out


def _fields(message: Any) -> Callable[[str], Any]:
    """name -> the message's field, None when absent: for the dict of a batch
    result or an SDK Message, told apart once for all the fields a row reads."""
    if _is_mapping(message):
        return message.get
    return lambda name: getattr(message, name, None)


def _attr(message: Any, name: str) -> Any:
    return _fields(message)(name)


def result_row(ctx: RowContext, request: Request, item: Item, sent: Sent, message: Any,
               output: Any, usage: Mapping[str, Any], *, batch: bool) -> Dict[str, Any]:
    """One `results/` row."""
    field = _fields(message)
    row = {
        "record_id": item.record_id,
        "pack_key": display_pack_key(item.pack_key),
        "run_id": ctx.run_id,
        "output_json": fastjson.dumps_sorted(output) if ctx.output_schema else None,
        "output_text": None if ctx.output_schema else (output if isinstance(output, str) else json.dumps(output)),
        "stop_reason": field("stop_reason"),
        "mode": ctx.mode,
        "api_base": ctx.api_base,
        "model": ctx.model,
        "response_model": field("model"),
        "prompt_sha256": ctx.prompt_sha256,
        "input_sha256": item.input_sha256,
        "batch_id": sent.batch_id,
        "custom_id": request.custom_id,
        "message_id": field("id"),
        "request_id": sent.request_id,
        "pack_id": request.pack_id,
        "pack_size": len(request.items),
        "pack_position": item.position,
        "attempts": sent.attempts,
        "service_tier": usage.get("service_tier"),
        "cost_usd": ctx.prices.cost(ctx.model, usage, batch=batch),
        "price_table_version": ctx.prices.version,
        "injection_flags": list(item.flags),
        "submitted_at": sent.submitted_at,
        "completed_at": sent.completed_at,
    }
    for key in USAGE_KEYS:
        row[key] = int(usage.get(key) or 0)
    if ctx.output_schema:
        row["output"] = arrow_converter(ctx.output_schema)(output)
    return row


def dead_letter(request: Request, item: Item, sent: Sent, stage: Stage, reason: Reason,
                message: str, usage: Optional[Mapping[str, int]] = None,
                cost_usd: Optional[float] = None) -> DeadLetter:
    return DeadLetter(record_id=item.record_id, pack_key=display_pack_key(item.pack_key),
                      stage=stage.value, error_type=reason.value, error_message=message,
                      attempts=sent.attempts, batch_id=sent.batch_id, custom_id=request.custom_id,
                      usage=dict(usage) if usage else None, cost_usd=cost_usd)


def add_usage(a: Optional[Mapping[str, int]], b: Optional[Mapping[str, int]]) -> Dict[str, int]:
    return {k: int((a or {}).get(k) or 0) + int((b or {}).get(k) or 0) for k in USAGE_KEYS}


#: record id -> tokens it already consumed in earlier, failed attempts.
Carried = Mapping[str, Mapping[str, int]]


@dataclasses.dataclass
class Resolution:
    """What one answered request means for each of its records.

    rows:    result rows (the record's answer is trusted);
    dead:    dead letters (no more attempts);
    reasks:  groups of record ids to ask again, each as one request;
    carried: for every re-asked id, the tokens spent on it so far (its
             final row carries the sum, so the output adds up to the bill);
    invented: ids the answer made up (dropped, counted).
    """

    rows: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    dead: List[DeadLetter] = dataclasses.field(default_factory=list)
    reasks: List[List[str]] = dataclasses.field(default_factory=list)
    carried: Dict[str, Dict[str, int]] = dataclasses.field(default_factory=dict)
    invented: int = 0


def resolve(ctx: RowContext, request: Request, sent: Sent, message: Any, *, batch: bool,
            carried: Optional[Carried] = None, max_reasks: int = 0,
            usage: Optional[Dict[str, Any]] = None) -> Resolution:
    """Sort the records of an answered request into rows, dead letters and re-asks.

    The request's usage is shared over all its items in proportion to their
    tokens (exact integers), and each record's share is added to what it
    consumed in earlier attempts: the `results` and `dead_letter` token
    columns together sum exactly to what the API billed. `usage` is
    usage_of(message), when the caller already has it.
    """
    carried = carried or {}
    if usage is None:
        usage = usage_of(message)
    if len(request.items) == 1:
        # One item gets the whole usage: what share_usage returns, without the
        # arithmetic (a copy: usage_of's counters, and the tier _spent sets anyway).
        shares = [dict(usage)]
    else:
        shares = share_usage(usage, [max(1, i.tokens) for i in request.items])
    spent = {i.record_id: _spent(s, carried.get(i.record_id), usage.get("service_tier"))
             for i, s in zip(request.items, shares)}
    text, stop = message_text(message), _attr(message, "stop_reason")
    out = Resolution()

    def cost(record_id: str) -> float:
        return ctx.prices.cost(ctx.model, spent[record_id], batch=batch)

    if not request.packed:
        (item,) = request.items
        parsed = answers.parse_single_answer(text, stop, ctx.output_schema)
        if parsed.ok:
            out.rows.append(result_row(ctx, request, item, sent, message, parsed.output,
                                       spent[item.record_id], batch=batch))
        else:
            out.dead.append(dead_letter(request, item, sent, Stage.VALIDATE, parsed.reason, parsed.message,
                                        spent[item.record_id], cost(item.record_id)))
        return out

    by_id = {i.record_id: i for i in request.items}
    outcome = answers.parse_pack_answer(text, stop, request.record_ids, ctx.output_schema)
    out.invented = len(outcome.invented)
    for record_id, output in outcome.valid.items():
        out.rows.append(result_row(ctx, request, by_id[record_id], sent, message, output,
                                   spent[record_id], batch=batch))
    failures = outcome.failures()
    plan = answers.reask_plan(list(failures), request.attempt, max_reasks) if failures else []
    if plan is None:
        for record_id, (reason, why) in failures.items():
            out.dead.append(dead_letter(request, by_id[record_id], sent, Stage.UNPACK, reason, why,
                                        spent[record_id], cost(record_id)))
    else:
        out.reasks = plan
        out.carried = {record_id: spent[record_id] for record_id in failures}
    return out


def _spent(share: Dict[str, int], earlier: Optional[Mapping[str, int]], service_tier: Any) -> Dict[str, Any]:
    """A record's tokens so far: its share of this answer plus what it consumed before.

    `share` (integers, a fresh dict) is used as it is when nothing was carried:
    add_usage would only copy it.
    """
    spent: Dict[str, Any] = share if earlier is None else add_usage(share, earlier)
    spent["service_tier"] = service_tier
    return spent


def failed_request(ctx: RowContext, request: Request, sent: Sent, stage: Stage, reason: Reason,
                   message: str, *, batch: bool, carried: Optional[Carried] = None) -> List[DeadLetter]:
    """Dead letters for every record of a request that got no usable answer."""
    carried = carried or {}
    dead = []
    for item in request.items:
        spent = carried.get(item.record_id)
        dead.append(dead_letter(request, item, sent, stage, reason, message, spent,
                                ctx.prices.cost(ctx.model, spent, batch=batch) if spent else None))
    return dead


def dead_letter_row(dl: DeadLetter, run_id: str, mode: str, created_at: Optional[dt.datetime] = None) -> Dict[str, Any]:
    """One `dead_letter/` row. Its texts always encode as UTF-8: a lone
    surrogate (an undecodable input byte) anywhere in them is written as an
    escape (normalize.safe_text), never left to fail the Parquet writer."""
    return {
        "record_id": safe_optional(dl.record_id),
        "pack_key": safe_optional(display_pack_key(dl.pack_key)) if dl.pack_key else None,
        "run_id": run_id, "mode": mode,
        "stage": dl.stage, "error_type": dl.error_type, "error_message": safe_optional(dl.error_message),
        "raw": safe_optional(dl.raw), "source": safe_optional(dl.source), "attempts": dl.attempts,
        "batch_id": dl.batch_id, "custom_id": dl.custom_id, "created_at": created_at or now(),
        "cost_usd": dl.cost_usd,
        **{k: (int(dl.usage.get(k) or 0) if dl.usage else None) for k in USAGE_KEYS},
    }
