"""{run_date} in --input as in --output and --ledger: the schedulers' examples
pass date-partitioned input globs (deploy/airflow_dag.py, deploy/cloud_scheduler.sh)."""
from __future__ import annotations

import shutil

from pipeline.plan import plan_command
from pipeline.run import EXIT_OK, run
from tests.conftest import assert_one_in_one_out, read_output

TASK = "samples/sentiment.yaml"


def _dated_input(tmp_path, day):
    folder = tmp_path / "in" / day
    folder.mkdir(parents=True)
    with open("samples/emails.jsonl", encoding="utf-8") as f:
        lines = f.readlines()[:6]
    (folder / "part-0.jsonl").write_text("".join(lines), encoding="utf-8")
    return str(folder / "part-0.jsonl")


def test_run_date_is_substituted_in_the_input(emu, api_env, tmp_path):
    emu.reset()
    path = _dated_input(tmp_path, "2026-12-01")
    _dated_input(tmp_path, "2026-12-02")  # another day's partition: must not be read
    pattern = str(tmp_path / "in" / "{run_date}" / "*.jsonl")
    out = str(tmp_path / "out" / "{run_date}")
    assert run(["--task", TASK, "--input", pattern, "--output", out, "--run-date", "2026-12-01",
                "--mode", "sync", "--api-base", emu.base_url]) == EXIT_OK
    results, dead = read_output(str(tmp_path / "out" / "2026-12-01"))
    assert_one_in_one_out(path, results, dead)
    assert emu.stats()["messages_calls"] == len(results)


def test_plan_substitutes_run_date_too(emu, api_env, tmp_path, capsys):
    _dated_input(tmp_path, "2026-12-01")
    pattern = str(tmp_path / "in" / "{run_date}" / "*.jsonl")
    assert plan_command(["--task", TASK, "--input", pattern, "--run-date", "2026-12-01",
                         "--api-base", emu.base_url, "--plan-pilot", "0", "--plan-count-calls", "0"]) == EXIT_OK
    assert "2026-12-01" in capsys.readouterr().out
    shutil.rmtree(tmp_path / "in")
