"""From an API answer to result rows and dead letters: pure functions.

Shared by every route (Messages and Message Batches), so a record's row looks
the same whichever way it was asked."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any, Dict, List, Mapping, Optional, Tuple

from transforms import answers
from transforms.costs import PriceTable
from transforms.normalize import display_pack_key
from transforms.records import DeadLetter, Reason, Stage
from transforms.requests import Item, Request
from transforms.schema import to_arrow_value

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


def message_text(message: Any) -> str:
    """Concatenated text blocks of an SDK Message (or its dict form)."""
    content = message["content"] if isinstance(message, Mapping) else message.content
    parts = []
    for block in content or ():
        kind = block["type"] if isinstance(block, Mapping) else block.type
        if kind == "text":
            parts.append(block["text"] if isinstance(block, Mapping) else block.text)
    return "".join(parts)


def usage_of(message: Any) -> Dict[str, Any]:
    usage = message["usage"] if isinstance(message, Mapping) else message.usage
    get = usage.get if isinstance(usage, Mapping) else (lambda k, d=None: getattr(usage, k, d))
    out: Dict[str, Any] = {k: int(get(k, 0) or 0) for k in USAGE_KEYS}
    out["service_tier"] = get("service_tier", None)
    return out


def _attr(message: Any, name: str) -> Any:
    return message.get(name) if isinstance(message, Mapping) else getattr(message, name, None)


def result_row(ctx: RowContext, request: Request, item: Item, sent: Sent, message: Any,
               output: Any, usage: Mapping[str, Any], *, batch: bool) -> Dict[str, Any]:
    """One `results/` row."""
    row = {
        "record_id": item.record_id,
        "pack_key": display_pack_key(item.pack_key),
        "run_id": ctx.run_id,
        "output_json": json.dumps(output, ensure_ascii=False, sort_keys=True) if ctx.output_schema else None,
        "output_text": None if ctx.output_schema else (output if isinstance(output, str) else json.dumps(output)),
        "stop_reason": _attr(message, "stop_reason"),
        "mode": ctx.mode,
        "model": ctx.model,
        "response_model": _attr(message, "model"),
        "prompt_sha256": ctx.prompt_sha256,
        "input_sha256": item.input_sha256,
        "batch_id": sent.batch_id,
        "custom_id": request.custom_id,
        "message_id": _attr(message, "id"),
        "request_id": sent.request_id,
        "pack_id": request.pack_id,
        "pack_size": len(request.items),
        "pack_position": item.position,
        "attempts": sent.attempts,
        "service_tier": usage.get("service_tier"),
        "cost_usd": ctx.prices.cost(ctx.model, usage, batch=batch),
        "price_table_version": ctx.prices.version,
        "injection_flags": [],
        "submitted_at": sent.submitted_at,
        "completed_at": sent.completed_at,
    }
    for key in USAGE_KEYS:
        row[key] = int(usage.get(key) or 0)
    if ctx.output_schema:
        row["output"] = to_arrow_value(output, ctx.output_schema)
    return row


def dead_letter(request: Request, item: Item, sent: Sent, stage: Stage, reason: Reason,
                message: str) -> DeadLetter:
    return DeadLetter(record_id=item.record_id, pack_key=display_pack_key(item.pack_key),
                      stage=stage.value, error_type=reason.value, error_message=message,
                      attempts=sent.attempts, batch_id=sent.batch_id, custom_id=request.custom_id)


def single_outcome(ctx: RowContext, request: Request, sent: Sent, message: Any, *,
                   batch: bool) -> Tuple[List[Dict[str, Any]], List[DeadLetter]]:
    """Rows for a one-record request whose call succeeded at the HTTP level."""
    (item,) = request.items
    parsed = answers.parse_single_answer(message_text(message), _attr(message, "stop_reason"),
                                         ctx.output_schema)
    if not parsed.ok:
        return [], [dead_letter(request, item, sent, Stage.VALIDATE, parsed.reason, parsed.message)]
    return [result_row(ctx, request, item, sent, message, parsed.output, usage_of(message), batch=batch)], []


def dead_letter_row(dl: DeadLetter, run_id: str, mode: str, created_at: Optional[dt.datetime] = None) -> Dict[str, Any]:
    """One `dead_letter/` row."""
    return {
        "record_id": dl.record_id, "pack_key": display_pack_key(dl.pack_key) if dl.pack_key else None,
        "run_id": run_id, "mode": mode,
        "stage": dl.stage, "error_type": dl.error_type, "error_message": dl.error_message,
        "raw": dl.raw, "source": dl.source, "attempts": dl.attempts,
        "batch_id": dl.batch_id, "custom_id": dl.custom_id, "created_at": created_at or now(),
    }
