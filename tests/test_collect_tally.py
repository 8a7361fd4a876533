"""The Collector sums its per-result counts before passing them on: the totals
stay what they were when every result was passed on by itself."""
from __future__ import annotations

import datetime as dt
import json
import types

import pytest

from transforms import progress
from transforms.batches.route import PollSettings, SubmittedBatch, _CollectBatches
from transforms.batches.collect import COUNTS, PROGRESS, Collector
from transforms.api.client import RetryPolicy, wire_schemas
from transforms.api.costs import load_prices
from transforms.prompts.outcomes import RowContext
from transforms.records import Record
from transforms.prompts.requests import RequestBuilder
from transforms.prompts.task import Task

TASK = Task(model="claude-haiku-4-5", system="Be brief.", template="{text}",
            output_schema={"type": "object", "properties": {"label": {"type": "string"}},
                           "required": ["label"], "additionalProperties": False})
AT = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def _line(request, n):
    message = {"id": f"msg_{n}", "model": TASK.model, "stop_reason": "end_turn",
               "content": [{"type": "text", "text": json.dumps({"label": "ok"})}],
               "usage": {"input_tokens": 10 + n, "output_tokens": 3, "cache_creation_input_tokens": 0,
                         "cache_read_input_tokens": 2, "service_tier": "batch"}}
    return json.dumps({"custom_id": request.custom_id, "result": {"type": "succeeded", "message": message}})


def _collector(requests, lines):
    ctx = RowContext(run_id="r1", mode="batch", model=TASK.model, prompt_sha256=TASK.prompt_sha256,
                     output_schema=TASK.output_schema, prices=load_prices())
    fn = _CollectBatches(None, RetryPolicy(), RequestBuilder(task=TASK, run_id="r1", wire_schemas=wire_schemas(TASK)), ctx, PollSettings(), 2)
    body = ("\n".join(lines) + "\n").encode()
    # The API's side is not under test here: its calls answer from memory.
    fn._calls = types.SimpleNamespace(
        retrieve=lambda batch_id: types.SimpleNamespace(id=batch_id, processing_status="ended", ended_at=AT),
        results=lambda batch_id: iter([body[:7], body[7:]]))
    return fn, ctx


@pytest.mark.parametrize("every", [1, 2, 1000])
def test_progress_totals_do_not_depend_on_how_often_the_tally_is_passed_on(monkeypatch, every):
    builder = RequestBuilder(task=TASK, run_id="r1", wire_schemas=wire_schemas(TASK))
    requests = [builder.single(Record(f"id-{n}", "k", f"text {n}")) for n in range(5)]
    fn, ctx = _collector(requests, [_line(r, n) for n, r in enumerate(requests)])
    monkeypatch.setattr(Collector, "COUNT_EVERY", every)
    progress.reset()
    rows = list(fn.process(SubmittedBatch("msgbatch_1", AT, tuple(requests))))
    assert len(rows) == 5
    counts = progress.snapshot()
    assert counts["answered"] == 5
    assert counts["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows))
    assert counts["batches_open"] == -1
    # The Collector itself: counts come in pieces of `every` results, none empty, none lost.
    items = list(Collector(fn._calls, *fn._collector_args).collect(SubmittedBatch("msgbatch_1", AT, tuple(requests))))
    pieces = [value for tag, value in items if tag == COUNTS]
    assert all(pieces) and len(pieces) == 5 // every + 1  # every `every` results, and the rest at the end
    assert sum(p.get((PROGRESS, "answered"), 0) for p in pieces) == 5
