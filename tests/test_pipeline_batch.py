"""End to end: the real pipeline on the DirectRunner, the real SDK, the emulator over HTTP."""
from __future__ import annotations

import json
import os

import pytest

from bench import datagen
from pipeline.run import EXIT_OK, EXIT_USAGE, run
from tests.conftest import assert_one_in_one_out, read_output

SAMPLE = "samples/emails.jsonl"
TASK = "samples/sentiment.yaml"
PROVENANCE = ("record_id", "run_id", "output", "output_json", "stop_reason", "mode", "model",
              "response_model", "prompt_sha256", "input_sha256", "batch_id", "custom_id", "message_id",
              "pack_id", "pack_size", "input_tokens", "output_tokens", "cost_usd",
              "price_table_version", "submitted_at", "completed_at")


def _args(emu, output, *extra, input_path=SAMPLE):
    return ["--task", TASK, "--input", input_path, "--output", str(output), "--mode", "batch",
            "--pack-key-field", "customer_id", "--api-base", emu.base_url,
            "--poll-interval-s", "0.05", "--poll-max-interval-s", "0.2", *extra]


def test_sample_job_one_in_one_out_with_provenance(emu, api_env, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(_args(emu, out)) == EXIT_OK
    results, dead = read_output(str(out))
    assert_one_in_one_out(SAMPLE, results, dead)
    assert results, "the sample must produce results"
    for row in results:
        for col in PROVENANCE:
            assert row[col] is not None, (col, row["record_id"])
        assert row["output"]["sentiment"] in {"positive", "neutral", "negative", "mixed"}
        assert -1 <= row["output"]["score"] <= 1
        assert row["service_tier"] == "batch"
        assert row["custom_id"] and len(row["custom_id"]) <= 64
    reasons = {d["error_type"] for d in dead}
    assert {"malformed_json", "not_an_object", "missing_id", "empty_id", "duplicate_id"} <= reasons
    summary = json.loads((out / "summary.json").read_text())
    assert summary["one_in_one_out"] is True
    assert summary["results"] == len(results) and summary["dead_letters"] == len(dead)
    billed = sum(r["cost_usd"] for r in results) + sum(d["cost_usd"] or 0 for d in dead)
    assert summary["cost_usd"] == pytest.approx(billed, abs=1e-5)
    assert summary["cache_read_input_tokens"] > 0  # the long instructions are prompt-cached
    assert "one in, one out yes" in capsys.readouterr().out
    # the key never reaches the output
    for path in out.rglob("*"):
        if path.is_file():
            assert api_env.encode() not in path.read_bytes()


def test_ten_thousand_records_in_several_batches(emu, api_env, tmp_path):
    data = tmp_path / "in.jsonl"
    datagen.write_jsonl(str(data), 10_000, seed=3)
    before = emu.stats()["batches_created"]
    out = tmp_path / "out"
    assert run(_args(emu, out, "--max-requests-per-batch", "3000", input_path=str(data))) == EXIT_OK
    results, dead = read_output(str(out))
    assert_one_in_one_out(str(data), results, dead)
    assert not dead
    assert emu.stats()["batches_created"] - before == 4  # ceil(10,000 / 3,000)
    assert len({r["batch_id"] for r in results}) == 4
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    assert metrics["batch_results_succeeded"] == 10_000
    for col in PROVENANCE:
        assert all(r[col] is not None for r in results), col
    # same content -> same answer: ids matched by custom_id, never by position
    by_id = {r["record_id"]: r for r in results}
    assert len(by_id) == 10_000


def test_usage_errors_exit_2_with_a_clear_message(emu, api_env, tmp_path, capsys):
    assert run(_args(emu, tmp_path / "o", input_path=str(tmp_path / "nothing-*.jsonl"))) == EXIT_USAGE
    assert "matches no file" in capsys.readouterr().err
    assert run(_args(emu, tmp_path / "o", "--max-requests-per-batch", "100001")) == EXIT_USAGE
    assert "--max-requests-per-batch" in capsys.readouterr().err


def test_existing_output_is_not_overwritten_by_accident(emu, api_env, tmp_path, capsys):
    data = tmp_path / "in.jsonl"
    datagen.write_jsonl(str(data), 20, seed=4)
    out = tmp_path / "out"
    assert run(_args(emu, out, input_path=str(data))) == EXIT_OK
    assert run(_args(emu, out, input_path=str(data))) == EXIT_USAGE
    assert "--overwrite" in capsys.readouterr().err
    assert run(_args(emu, out, "--overwrite", input_path=str(data))) == EXIT_OK
    results, dead = read_output(str(out))
    assert len(results) == 20


def test_help_lists_every_flag(capsys):
    assert run(["--help"]) == EXIT_OK
    text = capsys.readouterr().out
    for flag in ("--task", "--input", "--output", "--mode", "--api-base", "--id-field", "--text-field",
                 "--pack-key-field", "--max-requests-per-batch", "--max-batch-bytes"):
        assert flag in text


def test_unreadable_results_lines_dead_letter_their_records_not_the_job(emu, api_env, tmp_path):
    """A results line cut in half (fault batch_result_garbled) cannot be matched to
    its request: the job goes on, and those records land in the dead letter as
    missing results, once each."""
    data = tmp_path / "in.jsonl"
    datagen.write_jsonl(str(data), 40, seed=43, customers=4)
    emu.reset()
    emu.configure(faults={"batch_result_garbled": {"times": 3}}, seed=5)
    try:
        out = tmp_path / "out"
        assert run(_args(emu, out, input_path=str(data))) == EXIT_OK
        stats = emu.stats()
    finally:
        emu.configure(faults={})
    results, dead = read_output(str(out))
    assert_one_in_one_out(str(data), results, dead)
    assert stats["faults_fired"]["batch_result_garbled"] == 3
    assert len(dead) == 3 and {d["error_type"] for d in dead} == {"missing_result"}
    assert len(results) == 37
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["batch_results_unreadable_lines"] == 3


def test_refused_batches_among_accepted_ones_dead_letter_exactly_their_records(api_env, tmp_path):
    """Creates run on a background thread: a refusal (400) must still come back
    as one dead letter per record of that batch, next to the batches accepted."""
    import emulator
    data = tmp_path / "in.jsonl"
    datagen.write_jsonl(str(data), 4_000, seed=4)
    out = tmp_path / "out"
    # batches of 1,500, 1,500 and 1,000 requests; the emulator refuses over 1,200
    with emulator.running(max_batch_requests=1_200) as emu:
        assert run(_args(emu, out, "--max-requests-per-batch", "1500", input_path=str(data))) == EXIT_OK
        stats = emu.stats()
    results, dead = read_output(str(out))
    assert_one_in_one_out(str(data), results, dead)
    assert stats["batches_created"] == 1
    assert len(results) == 1_000 and len({r["batch_id"] for r in results}) == 1
    assert len(dead) == 3_000
    assert {(d["stage"], d["error_type"]) for d in dead} == {("submit", "api_error")}
    assert all("400" in d["error_message"] for d in dead)


@pytest.mark.parametrize("mode", ["batch", "packed-batch"])
def test_a_record_the_template_cannot_render_is_a_dead_letter(emu, api_env, tmp_path, mode):
    """The sample template needs {subject}: records without one are dead-lettered
    at the render stage (in batch mode while its request is built), the rest answered.
    (The first record has one: a template field the first valid record lacks
    refuses the whole run before anything is sent, tests/test_refuse.py.)"""
    rows = [{"id": f"t-{i}", "customer_id": f"c-{i % 3}", "channel": "email", "text": f"My order {i} is late."}
            for i in range(30)]
    for i, row in enumerate(rows):
        if i % 7 != 3:
            row["subject"] = f"Order {i}"
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    args = [a if a != "batch" else mode for a in _args(emu, out, input_path=str(data))]
    assert run(args) == EXIT_OK
    results, dead = read_output(str(out))
    assert_one_in_one_out(str(data), results, dead)
    assert sorted(d["record_id"] for d in dead) == sorted(f"t-{i}" for i in range(3, 30, 7))
    assert {(d["stage"], d["error_type"]) for d in dead} == {("render", "template_error")}
    assert all("subject" in d["error_message"] for d in dead)


def test_the_command_exits_with_its_code_and_flushes_everything(emu, api_env, tmp_path):
    """python -m pipeline exits with main()'s code; piped stdout and stderr arrive whole."""
    import subprocess
    import sys
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "pipeline", *_args(emu, out)], capture_output=True, text=True,
                          env=dict(os.environ, ANTHROPIC_API_KEY=api_env), timeout=300)
    assert done.returncode == EXIT_OK, done.stderr[-3000:]
    assert "one in, one out yes" in done.stdout and done.stdout.rstrip().splitlines()[-1].startswith("  report")
    results, dead = read_output(str(out))
    assert_one_in_one_out(SAMPLE, results, dead)
    refused = subprocess.run([sys.executable, "-m", "pipeline", *_args(emu, out)], capture_output=True, text=True,
                             env=dict(os.environ, ANTHROPIC_API_KEY=api_env), timeout=120)
    assert refused.returncode == EXIT_USAGE and "--overwrite" in refused.stderr
