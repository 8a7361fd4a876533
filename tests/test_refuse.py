"""Issue #18, "refuse before paying": everything that can be checked before the
first API call is checked then (exit 2: usage, 3: budget), and nothing is billed."""
from __future__ import annotations

import json

import pytest

from pipeline.run import run

TASK = "samples/sentiment.yaml"
SAMPLE = "samples/emails.jsonl"


def _args(emu, tmp_path, *extra, task=TASK, data=SAMPLE, mode="sync"):
    return ["--task", str(task), "--input", str(data), "--output", str(tmp_path / "out"),
            "--mode", mode, "--api-base", emu.base_url, "--poll-interval-s", "0.05", *extra]


def _nothing_billed(emu):
    stats = emu.stats()
    assert stats["messages_calls"] == 0 and stats["batches_created"] == 0, stats


# --- 1. typos in flags -------------------------------------------------------

@pytest.mark.parametrize("typo,value,suggestion", [
    ("--max-cost", "5", "--max-cost-usd"),
    ("--pack-key-feld", "account_id", "--pack-key-field"),
    ("--id-feild", "ticket_id", "--id-field"),
])
@pytest.mark.parametrize("command", ["run", "plan"])
def test_unknown_flag_exits_2_with_a_suggestion(emu, api_env, tmp_path, capsys, typo, value,
                                                suggestion, command):
    emu.reset()
    argv = _args(emu, tmp_path, typo, value)
    assert run((["plan"] if command == "plan" else []) + argv) == 2
    err = capsys.readouterr().err
    assert f"error: unknown flag {typo} (did you mean {suggestion}?)" in err
    assert "Discarding unparseable" not in err
    _nothing_billed(emu)


def test_beam_flags_still_pass():
    from apache_beam.options.pipeline_options import PipelineOptions
    from pipeline.options import unknown_flags_problem
    argv = ["--runner", "DirectRunner", "--project", "p", "--temp_location", "gs://b/tmp",
            "--direct_num_workers", "2", "--setup_file", "./setup.py", "--no_wait_until_finish",
            "--region", "europe-west1", "--max_cost_usd=3", "--pack_key_field", "customer_id",
            "--prompt_cache=false", "--overwrite", "--task", TASK]
    assert unknown_flags_problem(PipelineOptions(argv)) is None
    assert "unexpected argument" in unknown_flags_problem(PipelineOptions(["--overwrite", "false", "stray"]))


# --- 5. budget ---------------------------------------------------------------

@pytest.mark.parametrize("mode", ["sync", "packed", "batch", "packed-batch", "auto"])
def test_over_budget_exits_3_before_sending_in_every_mode(emu, api_env, tmp_path, capsys, mode):
    emu.reset()
    emu.configure(faults={}, batch_delay_s=0.0)
    argv = _args(emu, tmp_path, "--max-cost-usd", "0.001", "--pack-key-field", "customer_id",
                 "--plan-count-calls", "2", mode=mode)
    assert run(argv) == 3
    err = capsys.readouterr().err
    assert "OVER BUDGET" in err and "nothing was sent" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.parquet"))
    _nothing_billed(emu)


def test_allow_partial_budget_runs_up_to_the_cap(emu, api_env, tmp_path, capsys):
    emu.reset()
    emu.configure(faults={}, batch_delay_s=0.0)
    argv = _args(emu, tmp_path, "--max-cost-usd", "0.01", "--allow-partial-budget",
                 "--plan-count-calls", "2", mode="batch")
    assert run(argv) == 0
    assert "the run stops sending at the cap" in capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["results"] > 0 and summary["dead_letters_by_reason"].get("budget", 0) > 0
    assert summary["cost_usd"] <= 0.01


# --- 2. the task file is validated when loaded --------------------------------

def _broken_task(tmp_path, replace, by):
    text = open(TASK, encoding="utf-8").read()
    assert replace in text
    path = tmp_path / "x.yaml"
    path.write_text(text.replace(replace, by, 1), encoding="utf-8")
    return path


@pytest.mark.parametrize("replace,by,key,message", [
    ("      type: number\n", "      type: strng\n", "output_schema.properties.score.type",
     "'strng' is not valid"),
    ("      maxLength: 200\n", "      maxLength: two\n", "output_schema.properties.reason.maxLength",
     "'two' is not of type 'integer'"),
])
@pytest.mark.parametrize("command", ["run", "plan"])
def test_invalid_output_schema_exits_2_naming_file_and_key(emu, api_env, tmp_path, capsys, replace,
                                                           by, key, message, command):
    emu.reset()
    task = _broken_task(tmp_path, replace, by)
    argv = _args(emu, tmp_path, task=task)
    assert run((["plan"] if command == "plan" else []) + argv) == 2
    err = capsys.readouterr().err
    assert f"error: {task}: {key}: {message}" in err
    _nothing_billed(emu)


def test_the_sample_task_still_loads():
    from transforms.prompts.task import load_task
    assert load_task(TASK).output_schema["properties"]["score"]["type"] == "number"


# --- 3. template fields against the first valid record --------------------------

def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("command", ["run", "plan"])
def test_template_field_missing_from_the_input_exits_2(emu, api_env, tmp_path, capsys, command):
    emu.reset()
    task = _broken_task(tmp_path, "Subject: {subject}", "Subject: {subjct}")
    assert run((["plan"] if command == "plan" else []) + _args(emu, tmp_path, task=task)) == 2
    err = capsys.readouterr().err
    assert f"error: {task}: the template names field(s) {{subjct}} that the input does not have" in err
    assert "id 'em-000001'" in err and "subject" in err and "channel" in err
    _nothing_billed(emu)


def test_the_text_field_renders_under_its_own_name(emu, api_env, tmp_path):
    emu.reset()
    emu.configure(faults={}, batch_delay_s=0.0)
    data = _write_jsonl(tmp_path / "in.jsonl", [
        {"ticket_id": f"t{i}", "body": f"The parcel {i} arrived broken.", "channel": "email"}
        for i in range(3)])
    task = tmp_path / "body.yaml"
    task.write_text("model: claude-haiku-4-5\ninstructions: Say how the customer feels.\n"
                    "template: \"{channel} {ticket_id}: {body}\"\n", encoding="utf-8")
    argv = _args(emu, tmp_path, "--text-field", "body", "--id-field", "ticket_id", task=task, data=data)
    assert run(argv) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["results"] == 3 and summary["dead_letters"] == 0, summary


def test_task_render_knows_the_input_field_names():
    from transforms.prompts.task import Task
    from transforms.records import Record
    task = Task(model="m", system="s", template="{body}|{ticket_id}|{text}", text_field="body",
                id_field="ticket_id")
    assert task.render(Record("t1", "t1", "hello")) == "hello|t1|hello"


# --- 4. zero valid records ---------------------------------------------------------

@pytest.mark.parametrize("command", ["run", "plan"])
def test_all_dead_letters_exits_2_saying_why(emu, api_env, tmp_path, capsys, command):
    emu.reset()
    data = _write_jsonl(tmp_path / "in.jsonl", [{"ticket_id": "a", "text": "x"},
                                                 {"ticket_id": "b", "text": "y"}, {"id": "c", "text": ""}])
    assert run((["plan"] if command == "plan" else []) + _args(emu, tmp_path, data=data)) == 2
    err = capsys.readouterr().err
    assert f"error: no valid record in {data}: 3 rows, all dead letters: missing_id 2, empty_text 1" in err
    _nothing_billed(emu)


def test_empty_input_exits_2(emu, api_env, tmp_path, capsys):
    emu.reset()
    data = tmp_path / "in.jsonl"
    data.write_text("", encoding="utf-8")
    assert run(_args(emu, tmp_path, data=data)) == 2
    assert f"error: no valid record in {data}: the input is empty (0 rows)" in capsys.readouterr().err
    _nothing_billed(emu)


def test_a_run_with_no_valid_record_past_the_check_exits_1(emu, api_env, tmp_path, capsys):
    """The first-record check reads at most --plan-sample rows; the run says it too."""
    emu.reset()
    emu.configure(faults={}, batch_delay_s=0.0)
    data = _write_jsonl(tmp_path / "in.jsonl", [{"id": "a"}, {"id": "b"}, {"id": "c"}])
    assert run(_args(emu, tmp_path, "--plan-sample", "1", data=data)) == 1
    assert f"error: no valid record in {data}: 3 rows, all dead letters: missing_text 3" \
        in capsys.readouterr().err
    _nothing_billed(emu)


def test_a_wrong_id_field_is_named_when_no_row_has_it(emu, api_env, tmp_path, capsys):
    """The user forgot --id-field: every row lacks `id`; the message names the flag."""
    data = tmp_path / "tickets.jsonl"
    data.write_text("".join('{"ticket_id": "T%d", "text": "printer jams"}\n' % i for i in range(3)))
    emu.reset()
    code = run(["--task", TASK, "--input", str(data), "--output", str(tmp_path / "out"), "--mode", "sync",
                "--api-base", emu.base_url])
    assert code == 2
    assert "no row has the field 'id': check --id-field" in capsys.readouterr().err
    assert emu.stats()["messages_calls"] == 0
