"""The cost plan: deadlines, sampling, mode choice, budget, and planned against
actual cost in every mode on the sample job (the emulator bills with the same
token estimator, so input and cache tokens must agree exactly; output tokens
come from the pilot, so cost agrees within a few percent)."""
from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from bench import datagen
from pipeline import plan as CLI
from transforms import planning as P
from transforms.batching import BatchBounds
from transforms.io.normalize import FieldMap
from transforms.planning.estimate import build_requests
from transforms.planning.sample import read_sample
from pipeline.options import ClaudeOptions
from pipeline.run import EXIT_OK, run
from transforms.api.tokens import estimate_request_tokens

SAMPLE = "samples/emails.jsonl"
TASK = "samples/sentiment.yaml"
MODES = ("sync", "packed", "batch", "packed-batch")


def _opts(*args, **extra):
    """ClaudeOptions from flags, with `extra` options set as a caller would."""
    base = ["--task", TASK, "--input", SAMPLE, "--pack-key-field", "customer_id", *args]
    opts = PipelineOptions(base).view_as(ClaudeOptions)
    for name, value in extra.items():
        setattr(opts, name, value)
    return opts


# ---------------------------------------------------------------------------
# Deadlines

NOW = dt.datetime(2026, 11, 25, 22, 30, 0, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize("text, seconds", [
    ("3600", 3600), ("3600s", 3600), ("90m", 5400), ("2h", 7200), ("1h30m", 5400), ("1d", 86400),
    ("2.5h", 9000),
    ("23:00", 1800), ("09:00", 10.5 * 3600), ("22:30:30", 30),
    ("2026-11-26T09:00:00Z", 10.5 * 3600), ("2026-11-26T09:00:00+01:00", 9.5 * 3600),
    ("2026-11-26T09:00", 10.5 * 3600), ("2026-11-26 00:30:00Z", 7200),
])
def test_parse_deadline(text, seconds):
    assert P.parse_deadline(text, NOW) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "0", "0s", "25:00", "2026-11-25T09:00:00Z", "12:61"])
def test_parse_deadline_refuses(text):
    with pytest.raises(ValueError):
        P.parse_deadline(text, NOW)


def test_parse_deadline_naive_now_is_local_time():
    now = dt.datetime(2026, 11, 25, 8, 0)
    assert P.parse_deadline("09:15", now) == 4500


# ---------------------------------------------------------------------------
# Reading and sampling (the estimator only: no API)


def test_plan_reads_with_the_jobs_normalizer(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    p = P.plan(_opts(), None, False)
    assert p.sampling == "all" and p.rows_total == p.rows_sampled == 400
    assert p.records == 392 and p.dead_letters == 8
    assert p.dead_letters_by_reason == {"duplicate_id": 1, "empty_id": 1, "empty_text": 2, "invalid_text": 1,
                                        "malformed_json": 1, "missing_id": 1, "not_an_object": 1}
    assert "local estimator" in p.token_source and "ANTHROPIC_API_KEY" in p.token_source
    assert "item_output_tokens = 120" in p.output_source
    assert p.modes["sync"].requests == p.modes["batch"].requests == 392
    assert p.modes["packed"].requests < 392
    assert p.modes["packed"].records == 392
    # the assumption is 120 output tokens per record alone
    assert p.modes["sync"].output_tokens == 392 * 120
    # batch: the same tokens at half price; packing: fewer copies of the instructions
    assert p.modes["batch"].cost_usd == pytest.approx(p.modes["sync"].cost_usd / 2, rel=0.03)
    assert p.cheapest().mode == "packed-batch"
    text = P.render_plan(p)
    for mode in MODES:
        assert mode in text
    assert "lowest usage tier" in p.assumptions.limits_source and "not sent, not billed" in text


def test_request_token_estimates_are_the_bodies_estimates():
    """The plan sums Request.input_tokens; it must equal the estimate of the body sent."""
    from transforms.api.client import wire_schemas
    from transforms.prompts.requests import RequestBuilder
    from transforms.prompts.task import load_task
    task = load_task(TASK)
    builder = RequestBuilder(task=task, run_id="r", wire_schemas=wire_schemas(task))
    sample = read_sample(SAMPLE, FieldMap(pack_key_field="customer_id"), None, task, 400, "first")
    kinds = build_requests(builder, sample.records, BatchBounds(max_items=20, max_tokens=24_000))
    requests = kinds["single"]["single"].requests + kinds["packed"]["packed"].requests
    assert kinds["packed"]["packed"].count > 0
    for request in requests[:50] + requests[-20:]:
        assert request.input_tokens == estimate_request_tokens(builder.params(request))


@pytest.fixture(scope="module")
def big_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("big")
    jsonl = d / "big.jsonl"
    datagen.write_jsonl(str(jsonl), 6000, seed=3, customers=300)
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), str(d / "big.parquet"), row_group_size=1000)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    (d / "big.csv").write_text(buf.getvalue())
    return d


@pytest.mark.parametrize("ext", ["jsonl", "parquet", "csv"])
def test_sampling_counts_every_row_and_scales(big_inputs, ext, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    path = str(big_inputs / f"big.{ext}")
    assert P.count_rows(path, ext) == 6000
    full = P.plan(_opts("--input", path), None, False, sample=10 ** 9)
    assert full.sampling == "all" and full.records == 6000
    first = P.plan(_opts("--input", path), None, False, sample=500, sampling="first")
    assert (first.sampling, first.rows_sampled, first.rows_total, first.records) == ("first", 500, 6000, 6000)
    # Unpacked modes scale linearly from any sample.
    assert first.modes["sync"].requests == 6000
    assert first.modes["sync"].cost_usd == pytest.approx(full.modes["sync"].cost_usd, rel=0.05)
    # The first rows hold few records per customer: packs look smaller than they are (said so).
    assert first.modes["packed"].requests > 1.5 * full.modes["packed"].requests
    assert any("--plan-sampling random" in n for n in first.notes)
    # Drawing whole pack keys plans packs as they will be.
    drawn = P.plan(_opts("--input", path), None, False, sample=1000)  # auto: random with a pack key
    assert drawn.sampling == "random" and drawn.rows_total == 6000 and drawn.rows_sampled < 6000
    for mode in MODES:
        assert drawn.modes[mode].requests == pytest.approx(full.modes[mode].requests, rel=0.15), mode
        assert drawn.modes[mode].cost_usd == pytest.approx(full.modes[mode].cost_usd, rel=0.10), mode


def test_sampling_keeps_dead_letters_and_scales_them(tmp_path, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    lines = open(SAMPLE, encoding="utf-8").read().splitlines()
    path = tmp_path / "x5.jsonl"
    # five copies with fresh ids: 40 broken lines among 2,000
    out = []
    for copy in range(5):
        for line in lines:
            out.append(line.replace('"em-', f'"c{copy}-em-'))
    path.write_text("\n".join(out) + "\n")
    p = P.plan(_opts("--input", str(path)), None, False, sample=800, sampling="first")
    assert p.rows_total == 2000 and p.rows_sampled == 800
    assert p.dead_letters == pytest.approx(40, abs=6)
    assert p.records + p.dead_letters == pytest.approx(2000, abs=2)


# ---------------------------------------------------------------------------
# Choosing a mode, the budget


def _real_api_plan(monkeypatch, **kw):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    return P.plan(_opts(), None, False, **kw)


def test_choose_mode(monkeypatch):
    p = _real_api_plan(monkeypatch)  # real-API timing: batches take ~1 h, Messages ~a minute
    assert p.assumptions.batch_typical_s == 3600 and p.assumptions.batch_bound_s == 24 * 3600
    assert p.modes["packed-batch"].wall_s > 3600 and p.modes["packed-batch"].wall_bound_s > 24 * 3600
    mode, why = P.choose_mode(p, None)
    assert mode == "packed-batch" and "cheapest" in why and "no --deadline" in why
    mode, why = P.choose_mode(p, 2 * 3600)
    assert mode == "packed-batch" and "24.0 h" in why  # meets the deadline only typically: says so
    mode, why = P.choose_mode(p, 15 * 60)
    assert mode == "packed" and "packed-batch" in why  # the cheaper modes it skipped, and why
    mode, why = P.choose_mode(p, 1)
    assert mode == min(p.modes.values(), key=lambda m: m.wall_s).mode
    assert "no mode is expected" in why


def test_deadline_and_budget_marks(monkeypatch):
    p = _real_api_plan(monkeypatch, deadline_s=1800)
    assert p.modes["sync"].meets_deadline and not p.modes["batch"].meets_deadline
    text = P.render_plan(p)
    assert "MISSES" in text and "meets" in text
    assert P.budget_problem(p, "sync", None) is None
    assert P.budget_problem(p, "sync", 10.0) is None
    problem = P.budget_problem(p, "sync", 0.2)
    assert "OVER BUDGET" in problem and "packed-batch" in problem


def test_rate_limits_drive_wall_time(monkeypatch):
    slow = _real_api_plan(monkeypatch, sample=400)
    opts = _opts("--rpm", "50", "--itpm", "30000", "--otpm", "8000")
    p = P.plan(opts, None, False)
    assert "given by --rpm/--itpm/--otpm" in p.assumptions.limits_source
    assert p.modes["sync"].wall_s > 3 * slow.modes["sync"].wall_s
    assert slow.modes["sync"].limited_by == "concurrency 8"
    assert p.modes["sync"].limited_by in ("RPM", "ITPM", "OTPM")
    # 392 requests at 50 RPM: at least 7.8 minutes
    assert p.modes["sync"].wall_s >= 392 / 50 * 60


def test_plan_round_trips_through_json(monkeypatch):
    p = _real_api_plan(monkeypatch)
    again = P.Plan.from_dict(json.loads(json.dumps(p.to_dict())))
    assert again.modes["packed"].cost_usd == p.modes["packed"].cost_usd
    assert P.render_plan(again) == P.render_plan(p)


# ---------------------------------------------------------------------------
# The command and the pre-run hook, against the emulator


@pytest.fixture
def clean_emu(emu):
    emu.reset()
    emu.configure(faults={})
    yield emu
    emu.reset()


def _plan_args(emu, *extra):
    return ["--task", TASK, "--input", SAMPLE, "--pack-key-field", "customer_id",
            "--api-base", emu.base_url, *extra]


def test_plan_command(clean_emu, api_env, capsys):
    assert CLI.plan_command(_plan_args(clean_emu, "--mode", "auto", "--deadline", "2h",
                                     "--max-cost-usd", "1", "--plan-pilot", "10")) == 0
    out = capsys.readouterr().out
    assert "count_tokens endpoint" in out and "pilot of" in out
    assert "--mode auto would run: packed-batch" in out
    assert clean_emu.stats()["count_tokens_calls"] > 0


def test_plan_command_over_budget_exits_3(clean_emu, api_env, capsys):
    code = CLI.plan_command(_plan_args(clean_emu, "--mode", "sync", "--max-cost-usd", "0.2",
                                     "--plan-pilot", "0", "--plan-count-calls", "4"))
    captured = capsys.readouterr()
    assert code == CLI.EXIT_OVER_BUDGET == 3
    assert "OVER BUDGET: sync" in captured.err and "within budget" in captured.err
    # auto picks the cheapest, which fits
    assert CLI.plan_command(_plan_args(clean_emu, "--mode", "auto", "--max-cost-usd", "0.2",
                                     "--plan-pilot", "0", "--plan-count-calls", "4")) == 0


def test_plan_command_usage_errors(clean_emu, api_env, capsys):
    assert CLI.plan_command(_plan_args(clean_emu, "--deadline", "yesterday")) == 2
    assert "--deadline" in capsys.readouterr().err
    assert CLI.plan_command(["--task", TASK]) == 2
    assert CLI.plan_command(["--help"]) == 0
    assert "--max-cost-usd" in capsys.readouterr().out


def test_plan_before_run(clean_emu, api_env):
    opts = _opts("--api-base", clean_emu.base_url, mode="batch")
    assert CLI.plan_before_run(opts, clean_emu.base_url, False) == (None, None)  # nothing asked: no plan
    opts = _opts("--api-base", clean_emu.base_url, mode="auto", deadline="1h", plan_pilot=0)
    p, stop = CLI.plan_before_run(opts, clean_emu.base_url, False)
    assert stop is None and opts.mode == "packed" and p is not None  # batches take ~1 h: too slow
    opts = _opts("--api-base", clean_emu.base_url, mode="auto", max_cost_usd=0.001, plan_pilot=0)
    p, stop = CLI.plan_before_run(opts, clean_emu.base_url, False)
    assert stop == 3 and opts.mode == "packed-batch"


# ---------------------------------------------------------------------------
# Planned against actual, every mode


def test_planned_cost_matches_actual_cost_in_every_mode(clean_emu, api_env, tmp_path):
    opts = _opts("--api-base", clean_emu.base_url)
    p = P.plan(opts, clean_emu.base_url, True)  # local: the pilot is on by default
    assumed = P.plan(opts, clean_emu.base_url, True, pilot=0)
    assert "count_tokens endpoint" in p.token_source and "x1.000" in p.token_source
    assert "pilot of" in p.output_source
    report = {}
    for mode in MODES:
        clean_emu.reset()  # a fresh prompt cache, as for a run planned well before it starts
        out = tmp_path / mode
        args = ["--task", TASK, "--input", SAMPLE, "--output", str(out), "--mode", mode,
                "--pack-key-field", "customer_id", "--api-base", clean_emu.base_url,
                "--poll-interval-s", "0.05", "--poll-max-interval-s", "0.2"]
        assert run(args) == EXIT_OK
        actual = json.loads((out / "summary.json").read_text())
        planned = p.modes[mode]
        report[mode] = (planned.cost_usd, actual["cost_usd"])
        # Same estimator on both sides: input and cache tokens agree exactly.
        assert planned.input_tokens == actual["input_tokens"], mode
        assert planned.cache_creation_input_tokens == actual["cache_creation_input_tokens"], mode
        assert planned.cache_read_input_tokens == actual["cache_read_input_tokens"], mode
        assert planned.output_tokens == pytest.approx(actual["output_tokens"], rel=0.15), mode
        assert planned.cost_usd == pytest.approx(actual["cost_usd"], rel=0.10), (mode, report[mode])
        # Without a pilot the task's output budget is assumed: an upper estimate.
        assert assumed.modes[mode].cost_usd >= actual["cost_usd"], mode
    print("planned vs actual:", {m: f"{a:.4f} vs {b:.4f} ({(b - a) / a * 100:+.1f}%)"
                                 for m, (a, b) in report.items()})


def test_plan_before_run_always_is_quiet_and_sends_nothing(clean_emu, api_env, capsys):
    opts = _opts("--api-base", clean_emu.base_url, mode="batch")
    p, stop = CLI.plan_before_run(opts, clean_emu.base_url, True, always=True)
    assert stop is None and p is not None and opts.mode == "batch"
    assert capsys.readouterr().err == ""
    stats = clean_emu.stats()
    assert stats["messages_calls"] == 0 and stats["batches_created"] == 0  # count_tokens only
    assert "item_output_tokens" in p.output_source
