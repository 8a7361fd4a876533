"""Sharing a bundle's batches with the collect process (collect.py, batch_api._CollectBatches)."""
from __future__ import annotations

import json
import os

import pytest

from bench import datagen
from pipeline.run import EXIT_OK, run
from tests.conftest import assert_one_in_one_out, read_output
from transforms import api_process
from transforms.collect import DEAD, MAIN, offload_plan, read_items, write_items

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK = os.path.join(ROOT, "samples", "sentiment.yaml")
needs_two_cores = pytest.mark.skipif(not api_process.can_collect_beside(), reason="one core: nothing to share")


@pytest.mark.parametrize("sizes, taken", [
    ([], set()),
    ([10], {0}),                   # alone, the tie goes to the collect process (the DoFn keeps a lone batch)
    ([10, 10], {0}),
    ([27, 27, 27, 19], {0, 2}),    # the bench's 100,000 records: two each
    ([100, 1, 1, 1], {0}),         # the big one away, the small ones here
])
def test_the_plan_evens_out_the_two_sides(sizes, taken):
    assert offload_plan(sizes) == taken


def test_neither_side_gets_much_more_than_the_other():
    sizes = [27_000, 27_000, 27_000, 19_000, 5_000, 3_000]
    taken = offload_plan(sizes, share=0.4)
    helper = sum(sizes[i] for i in taken)
    job = sum(s for i, s in enumerate(sizes) if i not in taken) + 0.4 * helper
    assert abs(job - helper) <= max(sizes)


def test_items_come_back_in_order_and_their_file_is_removed(tmp_path):
    path = str(tmp_path / "items")
    items = [(MAIN, {"record_id": f"r{n}"}) if n % 3 else (DEAD, f"d{n}") for n in range(1_234)]
    assert write_items(path, items) == len(items)
    assert list(read_items(path)) == items
    assert not os.path.exists(path)


@pytest.mark.parametrize("argv, shared", [
    ([], True),                                                  # the DirectRunner, in this process
    (["--direct_running_mode", "multi_threading"], True),
    (["--direct_running_mode", "multi_processing"], False),      # a process per worker already
    (["--runner", "DataflowRunner"], False),                     # a process per core already
])
def test_only_a_job_run_in_one_process_shares_its_collecting(argv, shared):
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from pipeline.run import _runs_in_this_process
    options = PipelineOptions(argv)
    assert _runs_in_this_process(options, options.view_as(StandardOptions).runner or "DirectRunner") == shared


def _args(emu, out, data, *extra):
    return ["--task", TASK, "--input", str(data), "--output", str(out), "--pack-key-field", "customer_id",
            "--api-base", emu.base_url, "--poll-interval-s", "0.05", "--poll-max-interval-s", "0.2", *extra]


@needs_two_cores
def test_packs_reasked_by_the_collect_process_still_give_one_row_each(emu, api_env, tmp_path):
    """Re-asks of the batches collected beside are created by the collect process
    itself (through the ledger): every record still ends in exactly one row, the
    counts it made reach the job's metrics, and no token goes unaccounted."""
    data = tmp_path / "in.jsonl"
    datagen.write_jsonl(str(data), 600, seed=11, customers=30)
    emu.reset()
    emu.configure(faults={"pack_drop_ids": {"rate": 0.5, "count": 2}}, seed=3)
    try:
        out = tmp_path / "out"
        assert run(_args(emu, out, data, "--mode", "packed-batch", "--pack-size", "10",
                         "--max-requests-per-batch", "15")) == EXIT_OK
        stats = emu.stats()
    finally:
        emu.configure(faults={})
    results, dead = read_output(str(out))
    assert_one_in_one_out(str(data), results, dead)
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    assert metrics["batches_collected_beside"] >= 1
    assert metrics["reasked_records"] > 0 and any(r["attempts"] > 1 for r in results)
    assert metrics["batch_results_succeeded"] == len(results)
    assert stats["duplicates_billed"] == 0
    billed = stats["tokens"]["batch"]["input_tokens"]
    assert sum(r["input_tokens"] for r in results) + sum(d["input_tokens"] or 0 for d in dead) == billed


@needs_two_cores
def test_a_cost_limit_keeps_every_batch_in_the_job(emu, api_env, tmp_path):
    """--max-cost-usd's budget lives in the job's process: nothing is shared then."""
    data = tmp_path / "in.jsonl"
    datagen.write_jsonl(str(data), 300, seed=12)
    out = tmp_path / "out"
    assert run(_args(emu, out, data, "--mode", "batch", "--max-requests-per-batch", "100",
                     "--max-cost-usd", "1000")) == EXIT_OK
    results, dead = read_output(str(out))
    assert_one_in_one_out(str(data), results, dead)
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    assert metrics.get("batches_collected_beside", 0) == 0
    assert metrics["batch_results_succeeded"] == len(results) == 300


def test_a_batch_read_back_from_its_requests_file_is_weighed_by_its_count():
    import datetime as dt
    from transforms.collect import SubmittedBatch
    at = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    assert SubmittedBatch("b", at, (), None, "k", requests_path="p", request_count=27_000).size() == 27_000
    assert SubmittedBatch("b", at, (), None, "k", requests_path="p").size() == 1  # nothing says: equal shares


def test_the_collect_process_collects_a_batch_and_a_dead_one_is_replaced(emu, api_env):
    """BatchCalls.collect end to end (a batch created through the API process,
    collected by the collect process into an items file); killed, the collect
    process fails the call (the bundle is retried) and the next call starts a new one."""
    import datetime as dt
    from transforms.api_process import ApiProcessError, BatchCalls
    from transforms.client import ApiSettings, RetryPolicy
    from transforms.collect import COUNTS, PollSettings, SubmittedBatch
    from transforms.costs import load_prices
    from transforms.outcomes import RowContext
    from transforms.records import Record
    from transforms.requests import RequestBuilder, seal_work
    from transforms.task import load_task
    task = load_task(TASK)
    builder = RequestBuilder(task=task, run_id="share-test", schemas_by_api_process=True)
    ctx = RowContext(run_id="share-test", mode="batch", model=task.model, prompt_sha256=task.prompt_sha256,
                     output_schema=task.output_schema, prices=load_prices())
    calls = BatchCalls(ApiSettings(base_url=emu.base_url), RetryPolicy(max_attempts=1))
    sealed = tuple(seal_work(builder.single(Record(f"s-{i}", "k", f"text {i}", {"channel": "email", "subject": "s"})))
                   for i in range(7))
    created = calls.create(builder, sealed)
    submitted = SubmittedBatch(created.id, dt.datetime.now(dt.timezone.utc), (), None, None, sealed=sealed)
    args = (builder, ctx, PollSettings(initial_s=0.05, max_s=0.2), 2, None, True)

    items = list(read_items(calls.collect(args, submitted)))
    assert sorted(row["record_id"] for tag, row in items if tag == MAIN) == [f"s-{i}" for i in range(7)]
    assert sum(c.get(("metric", "batch_results_succeeded"), 0) for tag, c in items if tag == COUNTS) == 7

    helper = api_process.shared(api_process.COLLECT)
    old = helper._proc
    old.kill()
    old.wait()
    with pytest.raises(ApiProcessError, match="the API process stopped"):
        calls.collect(args, submitted)
    again = list(read_items(calls.collect(args, submitted)))  # a new collect process
    assert helper._proc is not old
    assert sorted(row["record_id"] for tag, row in again if tag == MAIN) == [f"s-{i}" for i in range(7)]
