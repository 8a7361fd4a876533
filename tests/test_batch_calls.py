"""The batch route's API calls (collect.BatchCalls), made in the job's own
process with the process's shared client, against the real emulator with the
real SDK; and what a failed call does to a bundle."""
from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import socket
import subprocess
import time
import urllib.parse

import anthropic
import pytest

import emulator
from bench import datagen
from pipeline.run import EXIT_OK, run
from tests.conftest import assert_one_in_one_out, read_output, wait_until_ended
from transforms.batches import lifecycle
from transforms.batches.route import PollSettings, SubmittedBatch, _CollectBatches, _CreateBatches
from transforms.api.client import ApiSettings, RetryPolicy, describe_error, wire_schemas
from transforms.batches.collect import BatchCalls
from transforms.api.costs import load_prices
from transforms.prompts.outcomes import RowContext
from transforms.records import Record
from transforms.prompts.requests import RequestBuilder, open_work, seal_work
from transforms.api.retry import Kind, classify
from transforms.prompts.task import load_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "samples", "emails.jsonl")
TASK = os.path.join(ROOT, "samples", "sentiment.yaml")
#: One attempt: these tests look at one failure, not at backoff.
QUICK = RetryPolicy(max_attempts=1)


def _calls(emu) -> BatchCalls:
    return BatchCalls(ApiSettings(base_url=emu.base_url), QUICK)


def _builder() -> RequestBuilder:
    task = load_task(TASK)
    return RequestBuilder(task=task, run_id="batch-calls-test", wire_schemas=wire_schemas(task))


def _sealed(builder, n, prefix="r"):
    return [seal_work(builder.single(Record(f"{prefix}-{i}", "k", f"text number {i}", {"channel": "email",
                                                                                        "subject": "s"})))
            for i in range(n)]


def _wait_ended(calls, batch_id, timeout_s=30.0):
    return wait_until_ended(calls.retrieve, batch_id, timeout_s)


def test_create_retrieve_and_stream_results_in_this_process(emu, api_env):
    emu.reset()
    calls, builder = _calls(emu), _builder()
    sealed = _sealed(builder, 5)
    created, reused, key = calls.create_batch(builder, sealed, None, "run-1")
    assert created.id.startswith("msgbatch_") and created.items == 5 and not reused and key is None
    state = _wait_ended(calls, created.id)
    assert state.id == created.id and state.ended_at is not None
    lines = b"".join(calls.results(created.id)).splitlines()
    ids = sorted(json.loads(line)["custom_id"] for line in lines)
    assert ids == sorted(open_work(s).custom_id for s in sealed)
    assert emu.stats()["batch_requests_received"] == 5


def test_an_api_refusal_raises_the_sdks_error_classified(emu, api_env):
    with pytest.raises(anthropic.NotFoundError) as info:
        _calls(emu).retrieve("msgbatch_does_not_exist")
    decision = classify(info.value)
    assert decision.kind is Kind.FATAL and decision.status_code == 404 and not decision.retryable
    assert "404" in describe_error(info.value)


def test_a_missing_key_fails_before_any_call(emu, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(RuntimeError, match="ANTHROPIC_API_KEY is not set"):
        _calls(emu).check_key()


def test_submit_records_the_batch_in_the_ledger_and_a_second_submit_reuses_it(emu, api_env, tmp_path):
    from transforms.batches import ledger as ledger_mod

    emu.reset()
    calls, builder = _calls(emu), _builder()
    settings = lifecycle.LedgerSettings(str(tmp_path / "ledger"))
    sealed = _sealed(builder, 4)
    created, reused, key = calls.create_batch(builder, sealed, settings, "run-1")
    assert not reused and created.items == 4
    entry = settings.open().get(key)
    assert entry.batch_id == created.id and entry.state == ledger_mod.CREATED
    requests, _ = lifecycle.read_requests(lifecycle.requests_path(settings.path, key))
    assert [r.custom_id for r in requests] == [open_work(s).custom_id for s in sealed]
    again, reused, same_key = calls.create_batch(builder, sealed, settings, "run-1")
    assert reused and again.id == created.id and same_key == key
    assert emu.stats()["batches_created"] == 1  # nothing created (or paid) twice


def _ctx():
    task = load_task(TASK)
    return RowContext(run_id="batch-calls-test", mode="batch", model=task.model,
                      prompt_sha256=task.prompt_sha256, output_schema=task.output_schema, prices=load_prices())


def test_a_pending_submission_fails_the_create_bundle(emu, api_env, monkeypatch):
    """Another writer creating the same batch: the bundle fails, for Beam to retry."""
    def pending(*_args, **_kwargs):
        raise lifecycle.SubmissionPending("submission abc is being created by another writer")

    monkeypatch.setattr(BatchCalls, "create_batch", pending)
    fn = _CreateBatches(ApiSettings(base_url=emu.base_url), QUICK, _builder(), _ctx())
    fn.setup()
    fn.start_bundle()
    with pytest.raises(lifecycle.SubmissionPending):
        list(fn.process((0, _sealed(_builder(), 2))))
        list(fn.finish_bundle())
    fn.teardown()


def test_a_failed_call_while_collecting_fails_the_bundle(emu, api_env):
    """A retrieve that still fails after its retries (here: nothing listens) is
    not a dead letter: the bundle fails and Beam retries it (with a ledger, its
    creates are reused). Only the API's 404 for the batch is an outcome
    (batch_not_found dead letters: tests/test_lifecycle.py)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, never listening: refused
        fn = _CollectBatches(ApiSettings(base_url=closed), QUICK, _builder(), _ctx(),
                             PollSettings(initial_s=0.01), 0)
        fn.setup()
        builder = _builder()
        submitted = SubmittedBatch("msgbatch_01", dt.datetime.now(dt.timezone.utc), (),
                                   sealed=tuple(_sealed(builder, 2)))
        with pytest.raises(anthropic.APIConnectionError):
            list(fn.process(submitted))


def test_the_emulator_receives_a_create_before_it_processes_earlier_batches(api_env):
    with emulator.running() as emu:
        calls, builder = _calls(emu), _builder()
        # A create held half sent...
        body = builder.batch_body([open_work(s) for s in _sealed(builder, 3, "held")])
        url = urllib.parse.urlparse(emu.base_url)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        conn.putrequest("POST", "/v1/messages/batches")
        for name, value in (("x-api-key", "k"), ("anthropic-version", "2023-06-01"),
                            ("content-type", "application/json"), ("content-length", str(len(body)))):
            conn.putheader(name, value)
        conn.endheaders()
        conn.send(body[:len(body) // 2])
        # ...while another is created whole: its processing waits for the first to arrive.
        waiting, _, _ = calls.create_batch(builder, _sealed(builder, 3, "whole"), None, "run-1")
        time.sleep(0.5)  # a 3-request batch at zero delay ends within milliseconds otherwise
        assert calls.retrieve(waiting.id).processing_status == "in_progress"
        conn.send(body[len(body) // 2:])
        response = conn.getresponse()
        held = json.loads(response.read())
        conn.close()
        assert response.status == 200, held
        _wait_ended(calls, waiting.id)
        _wait_ended(calls, held["id"])


def test_a_batch_job_starts_no_process_and_reasked_packs_give_one_row_each(emu, api_env, tmp_path,
                                                                             monkeypatch):
    """Several batches with re-asks, all created and collected by the job's own
    process: every record ends in exactly one row and no token goes unaccounted."""
    def no_process(*args, **kwargs):
        raise AssertionError(f"a batch job started a process: {args!r}")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    data = tmp_path / "in.jsonl"
    datagen.write_jsonl(str(data), 600, seed=11, customers=30)
    emu.reset()
    emu.configure(faults={"pack_drop_ids": {"rate": 0.5, "count": 2}}, seed=3)
    try:
        out = tmp_path / "out"
        assert run(["--task", TASK, "--input", str(data), "--output", str(out), "--pack-key-field",
                    "customer_id", "--api-base", emu.base_url, "--poll-interval-s", "0.05",
                    "--poll-max-interval-s", "0.2", "--mode", "packed-batch", "--pack-size", "10",
                    "--max-requests-per-batch", "15"]) == EXIT_OK
        stats = emu.stats()
    finally:
        emu.configure(faults={})
    results, dead = read_output(str(out))
    assert_one_in_one_out(str(data), results, dead)
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    assert metrics["batches_created"] > 1
    assert metrics["reasked_records"] > 0 and any(r["attempts"] > 1 for r in results)
    assert metrics["batch_results_succeeded"] == len(results)
    assert stats["duplicates_billed"] == 0
    billed = stats["tokens"]["batch"]["input_tokens"]
    assert sum(r["input_tokens"] for r in results) + sum(d["input_tokens"] or 0 for d in dead) == billed
