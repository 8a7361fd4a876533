"""The API process (transforms/api_process.py): the batch route's SDK calls made
by a helper process, against the real emulator with the real SDK."""
from __future__ import annotations

import dataclasses
import http.client
import json
import os
import pickle
import subprocess
import sys
import time
import urllib.parse

import pytest

import emulator
from tests.conftest import assert_one_in_one_out, read_output
from transforms import api_process, requests as requests_mod
from transforms.api_process import ApiProcessError, BatchCalls, needs_api_process
from transforms.client import ApiSettings, RetryPolicy, describe_error
from transforms.records import Record
from transforms.requests import RequestBuilder, open_work, seal_work
from transforms.retry import Decision, Kind, RemoteError, classify
from transforms.task import load_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "samples", "emails.jsonl")
TASK = os.path.join(ROOT, "samples", "sentiment.yaml")
#: Few attempts, short waits: these tests look at one failure, not at backoff.
QUICK = RetryPolicy(max_attempts=1)


def _calls(emu) -> BatchCalls:
    return BatchCalls(ApiSettings(base_url=emu.base_url), QUICK)


def _builder() -> RequestBuilder:
    return RequestBuilder(task=load_task(TASK), run_id="api-process-test")


def _sealed(builder, n, prefix="r"):
    return [seal_work(builder.single(Record(f"{prefix}-{i}", "k", f"text number {i}", {"channel": "email",
                                                                                        "subject": "s"})))
            for i in range(n)]


def _wait_ended(calls, batch_id, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = calls.retrieve(batch_id)
        if state.processing_status == "ended":
            return state
        time.sleep(0.02)
    raise AssertionError(f"batch {batch_id} did not end")


def test_a_batch_job_never_imports_the_sdk_in_its_own_process(emu, api_env, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pipeline", "--task", TASK, "--input", SAMPLE,
         "--output", str(out), "--mode", "batch", "--pack-key-field", "customer_id",
         "--api-base", emu.base_url, "--poll-interval-s", "0.05", "--poll-max-interval-s", "0.2"],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")]
    assert "apache_beam" in imported  # the check sees this process's imports
    assert not [m for m in imported if m == "anthropic" or m.startswith("anthropic.")]
    results, dead = read_output(str(out))
    assert_one_in_one_out(SAMPLE, results, dead)
    assert results and all(r["batch_id"] for r in results)


def test_create_retrieve_and_stream_results_through_the_helper(emu, api_env):
    emu.reset()
    calls, builder = _calls(emu), _builder()
    sealed = _sealed(builder, 5)
    created = calls.create(builder, sealed)
    assert created.id.startswith("msgbatch_") and created.items == 5
    state = _wait_ended(calls, created.id)
    assert state.id == created.id and state.ended_at is not None
    lines = b"".join(calls.results(created.id)).splitlines()
    ids = sorted(json.loads(line)["custom_id"] for line in lines)
    assert ids == sorted(open_work(s).custom_id for s in sealed)
    assert emu.stats()["batch_requests_received"] == 5


def test_the_body_the_helper_sends_is_the_one_the_builder_writes(emu, api_env):
    emu.reset()
    calls = _calls(emu)
    builder = dataclasses.replace(_builder(), schemas_by_api_process=True)
    requests = [open_work(s) for s in _sealed(builder, 3)]
    assert builder.output_schema(False) == requests_mod._wire_schema(
        json.dumps(dict(builder.task.output_schema), sort_keys=True))  # the SDK's transform, in this process
    created = calls.create(builder, requests)  # unsealed Works are sent as they are
    _wait_ended(calls, created.id)
    assert emu.stats()["batch_requests_received"] == 3
    # The helper transformed the schema itself: it started no helper of its own.
    assert _children(api_process.shared()._proc.pid) == []


def _children(pid: int):
    """The pids of a process's children (Linux's /proc)."""
    tasks = f"/proc/{pid}/task"
    return [int(c) for t in os.listdir(tasks) for c in open(f"{tasks}/{t}/children").read().split()]


def test_an_api_refusal_comes_back_classified(emu, api_env):
    calls = _calls(emu)
    with pytest.raises(RemoteError) as info:
        calls.retrieve("msgbatch_does_not_exist")
    decision = classify(info.value)
    assert decision.kind is Kind.FATAL and decision.status_code == 404 and not decision.retryable
    assert "404" in describe_error(info.value)
    schema = json.dumps({"type": "string"}, sort_keys=True)
    assert api_process.shared().call("wire_schema", schema) == {"type": "string"}  # still serving


def test_a_missing_key_fails_in_the_job_before_any_call(emu, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(RuntimeError, match="ANTHROPIC_API_KEY is not set"):
        _calls(emu).check_key()


def test_a_dead_helper_fails_the_call_and_the_next_call_starts_a_new_one(emu, api_env):
    helper = api_process.shared()
    helper.call("wire_schema", json.dumps({"type": "object"}, sort_keys=True))  # running
    old = helper._proc
    old.kill()
    old.wait()
    with pytest.raises(ApiProcessError, match="the API process stopped"):
        helper.call("wire_schema", json.dumps({"type": "object"}, sort_keys=True))
    assert helper.call("wire_schema", json.dumps({"type": "string"}, sort_keys=True)) == {"type": "string"}
    assert helper._proc is not old and helper._proc.poll() is None


def test_a_stream_left_unfinished_is_drained_and_a_nested_call_is_refused(emu, api_env):
    emu.reset()
    calls, builder = _calls(emu), _builder()
    created = calls.create(builder, _sealed(builder, 50))
    _wait_ended(calls, created.id)
    stream = calls.results(created.id)
    next(stream)
    with pytest.raises(RuntimeError, match="while this thread was still"):
        calls.retrieve(created.id)  # the same thread, mid-stream: would deadlock
    stream.close()
    assert calls.retrieve(created.id).processing_status == "ended"  # the rest was read and dropped


def test_remote_errors_cross_processes_with_their_decision():
    error = RemoteError(Decision(Kind.RATE_LIMITED, True, retry_after_s=2.0, status_code=429,
                                 reason="rate_limited: 429"), "rate_limited: 429")
    copy = pickle.loads(pickle.dumps(error))
    assert classify(copy) == error.decision and describe_error(copy) == "rate_limited: 429"


def test_classify_never_imports_the_sdk():
    code = ("import sys; from transforms.retry import classify; d = classify(ConnectionError()); "
            "print(d.kind.value, 'anthropic' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["fatal", "False"]  # no SDK loaded: none of its errors can exist


@pytest.mark.parametrize("argv,wanted", [
    ([], False),
    (["--help"], False),
    (["plan", "--task", "t.yaml"], False),
    (["--task", "t.yaml", "--input", "x"], True),            # batch is the default mode
    (["--task", "t.yaml", "--mode", "packed-batch"], True),
    (["--task", "t.yaml", "--mode=auto"], True),
    (["--task", "t.yaml", "--mode", "sync"], False),
    (["--task", "t.yaml", "--mode=packed", "-h"], False),
])
def test_which_command_lines_start_the_helper_early(argv, wanted):
    assert needs_api_process(argv) is wanted


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
        waiting = calls.create(builder, _sealed(builder, 3, "whole"))
        time.sleep(0.5)  # a 3-request batch at zero delay ends within milliseconds otherwise
        assert calls.retrieve(waiting.id).processing_status == "in_progress"
        conn.send(body[len(body) // 2:])
        response = conn.getresponse()
        held = json.loads(response.read())
        conn.close()
        assert response.status == 200, held
        _wait_ended(calls, waiting.id)
        _wait_ended(calls, held["id"])


def test_submit_records_the_batch_in_the_ledger_and_a_second_submit_reuses_it(emu, api_env, tmp_path):
    from transforms import ledger as ledger_mod, lifecycle

    emu.reset()
    calls, builder = _calls(emu), _builder()
    settings = lifecycle.LedgerSettings(str(tmp_path / "ledger"))
    sealed = _sealed(builder, 4)
    created, reused, key = calls.submit(settings, "run-1", builder, sealed)
    assert not reused and created.items == 4
    entry = settings.open().get(key)  # written by the helper, read here
    assert entry.batch_id == created.id and entry.state == ledger_mod.CREATED
    requests, _ = lifecycle.read_requests(lifecycle.requests_path(settings.path, key))
    assert [r.custom_id for r in requests] == [open_work(s).custom_id for s in sealed]
    again, reused, same_key = calls.submit(settings, "run-1", builder, sealed)
    assert reused and again.id == created.id and same_key == key
    assert emu.stats()["batches_created"] == 1  # nothing created (or paid) twice


def test_a_pending_submission_comes_back_as_itself_and_other_failures_as_remote_errors(monkeypatch):
    from transforms import lifecycle

    def pending(*_args):
        raise lifecycle.SubmissionPending("submission abc is being created by another writer")

    def broken(*_args):
        raise OSError("disk full")

    monkeypatch.setitem(api_process._CALLS, "pending", pending)
    monkeypatch.setitem(api_process._CALLS, "broken", broken)
    [(kind, error)] = api_process._answer(pickle.dumps(("pending", (), {})))
    assert kind == "err" and isinstance(pickle.loads(pickle.dumps(error)), lifecycle.SubmissionPending)
    [(kind, error)] = api_process._answer(pickle.dumps(("broken", (), {})))
    assert kind == "err" and isinstance(error, RemoteError)
    assert classify(error).kind is Kind.FATAL and describe_error(error) == "fatal: OSError"
