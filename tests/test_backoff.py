"""One test per backoff branch of the Messages route (`transforms/api/retry.py`,
`transforms/messages.py`): the real pipeline (`pipeline.run.run`, DirectRunner),
the real anthropic SDK, and the emulator injecting the failure.

Each test runs the job on ~30 generated records, checks one-in-one-out on the
Parquet output and in summary.json, and proves the branch with the emulator's
own counts (faults fired, HTTP statuses answered, how often each id was sent,
duplicates_billed). Faults are capped with `times` and spread with a seeded
`rate`, so retries wait about a second at most and each test stays well under
15 s.
"""
from __future__ import annotations

import glob
import json
import os
import time

import pytest

import emulator
from bench import datagen
from emulator.faults import unit_hash
from pipeline.run import EXIT_OK, run
from tests.conftest import assert_one_in_one_out, fake_key, read_output

TASK = "samples/sentiment.yaml"
N = 30
CONCURRENCY = 8
MESSAGES = "POST /v1/messages"


# ----------------------------------------------------------------------------- helpers

@pytest.fixture
def faulty_emu(emu):
    """The session emulator, clean before and after (faults off, counters zero)."""
    emu.configure(faults={}, seed=0)
    emu.reset()
    yield emu
    emu.configure(faults={}, seed=0)
    emu.reset()


def _input(tmp_path, n=N, customers=6):
    path = tmp_path / "in.jsonl"
    datagen.write_jsonl(str(path), n, seed=5, customers=customers)
    return str(path)


def _run(base_url, tmp_path, data, mode="sync", *extra):
    """Runs the job; returns (results, dead, summary) after checking one-in-one-out."""
    out = tmp_path / f"out-{mode}"
    args = ["--task", TASK, "--input", data, "--output", str(out), "--mode", mode,
            "--pack-key-field", "customer_id", "--api-base", base_url,
            "--concurrency", str(CONCURRENCY), "--max-attempts", "5", *extra]
    assert run(args) == EXIT_OK
    results, dead = read_output(str(out))
    assert_one_in_one_out(data, results, dead)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["one_in_one_out"] is True
    assert summary["records_in"] == count_lines(data)
    assert summary["results"] == len(results)
    assert summary["dead_letters"] == len(dead)
    assert summary["ids_with_more_than_one_row"] == 0
    return results, dead, summary


def count_lines(path):
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _statuses(stats):
    """HTTP status (or 'dropped' / 'timeout') -> count, for POST /v1/messages."""
    return dict(stats["requests"].get(MESSAGES, {}))


def _assert_all_answered(results, dead, summary, stats, n=N):
    assert not dead, [(d["record_id"], d["error_type"], d["error_message"]) for d in dead]
    assert len(results) == n and summary["dead_letters_by_reason"] == {}
    assert all(r["output"] is not None for r in results)
    # every id validly answered exactly once, nothing billed twice
    assert len(stats["items_answered"]) == n and set(stats["items_answered"].values()) == {1}
    assert stats["duplicates_billed"] == 0


def _assert_retried(stats, fault, status, times, mode, n=N):
    """The fault fired exactly `times` times, each failed request was sent
    again, and only the ids of failed requests were sent more than once."""
    statuses = _statuses(stats)
    assert stats["faults_fired"] == {fault: times}, stats["faults_fired"]
    assert statuses.get(status) == times, statuses
    resent = {i: c for i, c in stats["items_sent"].items() if c > 1}
    assert resent, "no id was sent twice: nothing was retried"
    if mode == "sync":
        # one record per request: exactly one extra send per failure, one 200 per record
        assert sum(c - 1 for c in stats["items_sent"].values()) == times
        assert statuses.get("200") == n
    else:
        # a failed pack is re-sent whole: the extra sends are whole packs
        assert statuses.get("200", 0) + times == sum(statuses.values())
        assert len(resent) >= 2
    return resent


def _hit(fault, mode, **options):
    """A fault that fires a few times, spread over the run by a seeded rate."""
    spec = {"rate": 0.2, "times": 3} if mode == "sync" else {"rate": 0.5, "times": 2}
    spec.update(options)
    return {fault: spec}


def _elapsed_s(row):
    return (row["completed_at"] - row["submitted_at"]).total_seconds()


# ----------------------------------------------------------------------------- retryable

@pytest.mark.parametrize("mode", ["sync", "packed"])
def test_429_with_retry_after_waits_and_retries(faulty_emu, api_env, tmp_path, mode):
    data = _input(tmp_path)
    faults = _hit("status_429", mode, retry_after=1)
    faulty_emu.configure(faults=faults, seed=3)
    results, dead, summary = _run(faulty_emu.base_url, tmp_path, data, mode)
    stats = faulty_emu.stats()
    _assert_all_answered(results, dead, summary, stats)
    resent = _assert_retried(stats, "status_429", "429", faults["status_429"]["times"], mode)
    # retry-after was honoured: a record whose request got k 429s waited >= k x 1 s for its answer
    # (a plain jittered backoff would wait uniformly in [0, 1] s, then [0, 2] s, ...)
    by_id = {r["record_id"]: r for r in results}
    for record_id, sent in resent.items():
        assert _elapsed_s(by_id[record_id]) >= 1.0 * (sent - 1), (record_id, sent, _elapsed_s(by_id[record_id]))


@pytest.mark.parametrize("mode", ["sync", "packed"])
@pytest.mark.parametrize("fault, status, seed", [
    ("status_529", "529", 4),           # overloaded: retried (and the concurrency gate narrows)
    ("status_500", "500", 5),           # server error: retried
    ("drop_connection", "dropped", 7),  # connection closed mid-request: retried
], ids=["529", "500", "dropped-connection"])
def test_transient_failure_is_retried(faulty_emu, api_env, tmp_path, mode, fault, status, seed):
    data = _input(tmp_path)
    faults = _hit(fault, mode)
    faulty_emu.configure(faults=faults, seed=seed)
    results, dead, summary = _run(faulty_emu.base_url, tmp_path, data, mode)
    stats = faulty_emu.stats()
    _assert_all_answered(results, dead, summary, stats)
    _assert_retried(stats, fault, status, faults[fault]["times"], mode)


def test_client_timeout_is_retried(faulty_emu, api_env, tmp_path):
    """The server holds the request 3 s; the client gives up after 1 s and retries."""
    data = _input(tmp_path)
    times, hang_s = 2, 3.0
    faulty_emu.configure(faults={"timeout": {"rate": 0.2, "times": times, "hang_s": hang_s}}, seed=6)
    started = time.monotonic()
    results, dead, summary = _run(faulty_emu.base_url, tmp_path, data, "sync", "--request-timeout-s", "1")
    # the hung handlers record their "timeout" when they let go: wait for them
    # (this also keeps their late counts out of the next test's stats)
    while _statuses(faulty_emu.stats()).get("timeout", 0) < times and time.monotonic() - started < 30:
        time.sleep(0.1)
    stats = faulty_emu.stats()
    _assert_all_answered(results, dead, summary, stats)
    resent = _assert_retried(stats, "timeout", "timeout", times, "sync")
    by_id = {r["record_id"]: r for r in results}
    for record_id in resent:
        # the client waited its own timeout (1 s), not the server's 3 s hang
        assert 1.0 <= _elapsed_s(by_id[record_id]) < 1.0 * times + 6, _elapsed_s(by_id[record_id])


# ----------------------------------------------------------------------------- not retryable

def test_400_is_dead_lettered_and_not_retried(faulty_emu, api_env, tmp_path):
    data = _input(tmp_path)
    victims = ["em-000004", "em-000017"]
    faulty_emu.configure(faults={"status_400": {"ids": victims}}, seed=8)
    results, dead, summary = _run(faulty_emu.base_url, tmp_path, data, "sync")
    stats = faulty_emu.stats()
    assert sorted(d["record_id"] for d in dead) == victims
    for d in dead:
        assert d["error_type"] == "api_error" and d["stage"] == "submit"
        assert "400" in d["error_message"] and "invalid_request_error" in d["error_message"], d
    assert len(results) == N - len(victims)
    assert summary["dead_letters_by_reason"] == {"api_error": len(victims)}
    # each victim was sent once: the 400 was not retried
    statuses = _statuses(stats)
    assert statuses == {"400": len(victims), "200": N - len(victims)}, statuses
    assert stats["faults_fired"] == {"status_400": len(victims)}
    assert all(stats["items_sent"][v] == 1 for v in victims)
    assert set(stats["items_sent"].values()) == {1}
    assert stats["duplicates_billed"] == 0


def test_400_in_a_pack_is_bisected_down_to_the_bad_record(faulty_emu, api_env, tmp_path):
    """A 400 on a pack is not retried as is: the pack is split in halves until
    the refused record is alone; only it is dead-lettered, its neighbours are
    answered, and no request is ever sent twice."""
    data = _input(tmp_path, customers=6)
    victim = "em-000004"
    faulty_emu.configure(faults={"status_400": {"ids": [victim]}}, seed=8)
    results, dead, summary = _run(faulty_emu.base_url, tmp_path, data, "packed")
    stats = faulty_emu.stats()
    statuses = _statuses(stats)
    assert [d["record_id"] for d in dead] == [victim]
    assert dead[0]["error_type"] == "api_error" and "400" in dead[0]["error_message"]
    assert summary["dead_letters_by_reason"] == {"api_error": 1}
    assert len(results) == N - 1
    # every request that carried the victim was refused once; none was repeated as is
    assert statuses["400"] == stats["faults_fired"]["status_400"] == stats["items_sent"][victim] >= 2
    assert set(statuses) == {"200", "400"}
    assert stats["duplicates_billed"] == 0


def test_401_dead_letters_every_record_and_never_leaks_the_key(monkeypatch, tmp_path, capfd):
    key = fake_key("WRONG-KEY-must-never-be-written-7f3c9e")
    monkeypatch.setenv("ANTHROPIC_API_KEY", key)
    data = _input(tmp_path)
    with emulator.running(api_keys=["right"]) as auth_emu:
        results, dead, summary = _run(auth_emu.base_url, tmp_path, data, "sync")
        stats = auth_emu.stats()
    assert results == [] and len(dead) == N
    for d in dead:
        # 401 stops every further call (halt); see the report on its error_type
        assert d["error_type"] in ("api_error", "spend_limit"), d
        assert d["stage"] == "submit"
        assert "401" in d["error_message"] and "authentication_error" in d["error_message"], d
    assert summary["results"] == 0 and sum(summary["dead_letters_by_reason"].values()) == N
    statuses = _statuses(stats)
    assert set(statuses) == {"401"} and 1 <= statuses["401"] <= CONCURRENCY, statuses
    assert stats["messages_calls"] == 0  # refused before the handler: nothing billed
    # the key is nowhere in the output: not in a row, a file's bytes, the summary, or the console
    for row in results + dead:
        assert key not in repr(row)
    files = glob.glob(os.path.join(str(tmp_path), "out-sync", "**", "*"), recursive=True)
    assert any(f.endswith(".parquet") for f in files) and any(f.endswith("summary.json") for f in files)
    for path in files:
        if os.path.isfile(path):
            with open(path, "rb") as f:
                assert key.encode() not in f.read(), path
    captured = capfd.readouterr()
    assert key not in captured.out and key not in captured.err


def test_spend_cap_stops_calls_and_dead_letters_the_rest(faulty_emu, api_env, tmp_path):
    n, rate, seed = 40, 0.1, 22
    data = _input(tmp_path, n=n)
    # the first spend-cap answer comes at the (first + 1)-th request, with full concurrency by then
    first = next(i for i in range(10_000) if unit_hash(seed, "spend_cap_429", i) < rate)
    assert 5 <= first < n // 2
    faulty_emu.configure(faults={"spend_cap_429": {"rate": rate}}, seed=seed)
    results, dead, summary = _run(faulty_emu.base_url, tmp_path, data, "sync")
    stats = faulty_emu.stats()
    statuses = _statuses(stats)
    total = sum(statuses.values())
    assert set(statuses) <= {"200", "429"} and statuses["429"] == stats["faults_fired"]["spend_cap_429"]
    assert statuses["200"] == len(results) >= first  # everything answered before the cap is a result
    for d in dead:
        assert d["error_type"] == "spend_limit" and d["stage"] == "submit", d
        assert "429" in d["error_message"], d
    assert summary["dead_letters_by_reason"] == {"spend_limit": len(dead)}
    assert len(dead) == n - len(results) >= n // 2
    # calls stopped: after the first spend-cap answer, at most the calls already
    # in flight went out -- far fewer than the records left
    after = total - (first + 1)
    assert after <= CONCURRENCY - 1, statuses
    assert 3 * after <= len(dead)
    # a spend-cap 429 is never retried: no id was sent twice
    assert set(stats["items_sent"].values()) == {1} and sum(stats["items_sent"].values()) == total
    never_sent = [d for d in dead if d["record_id"] not in stats["items_sent"]]
    assert len(never_sent) >= n - total
    assert stats["duplicates_billed"] == 0


def test_413_splits_the_pack_and_loses_nothing(faulty_emu, api_env, tmp_path):
    """A pack the API refuses as too large is split in halves (no retry as is);
    a single record refused as too large is dead-lettered."""
    data = _input(tmp_path, customers=6)
    faulty_emu.configure(faults={"status_413": {"times": 1}}, seed=9)
    results, dead, summary = _run(faulty_emu.base_url, tmp_path, data, "packed")
    stats = faulty_emu.stats()
    _assert_all_answered(results, dead, summary, stats)
    assert _statuses(stats)["413"] == 1 and stats["faults_fired"] == {"status_413": 1}
    split = {i for i, c in stats["items_sent"].items() if c == 2}
    assert len(split) >= 2 and set(stats["items_sent"].values()) == {1, 2}
    halves = {r["record_id"]: r for r in results if r["record_id"] in split}
    assert all(r["attempts"] == 2 for r in halves.values())
    assert max(r["pack_size"] for r in halves.values()) <= (len(split) + 1) // 2


@pytest.mark.parametrize("fault,status,etype", [
    ("status_400", 400, "invalid_request_error"), ("status_401", 401, "authentication_error"),
    ("status_403", 403, "permission_error"), ("status_404", 404, "not_found_error"),
    ("status_413", 413, "request_too_large")])
def test_client_error_faults_answer_like_the_api(faulty_emu, fault, status, etype):
    import anthropic

    client = anthropic.Anthropic(api_key="k", base_url=faulty_emu.base_url, max_retries=0)
    params = {"model": "claude-haiku-4-5", "max_tokens": 50,
              "messages": [{"role": "user", "content": '<item id="c1">hello</item>'}]}
    faulty_emu.configure(faults={fault: {"times": 1}})
    with pytest.raises(anthropic.APIStatusError) as e:
        client.messages.create(**params)
    assert e.value.status_code == status and e.value.body["error"]["type"] == etype
    assert e.value.response.headers.get("request-id")
    assert client.messages.create(**params).type == "message"  # times: 1
    assert faulty_emu.stats()["faults_fired"] == {fault: 1}
