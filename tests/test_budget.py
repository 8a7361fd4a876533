"""--max-cost-usd --allow-partial-budget: the run stops at the cap, loses nothing, and never
spends past it (without --allow-partial-budget it refuses up front: tests/test_refuse.py)."""
from __future__ import annotations

import json

import pytest

from bench import datagen
from pipeline.run import EXIT_OK, run
from tests.conftest import assert_one_in_one_out, read_output
from transforms.api.budget import Budget


#: claude-haiku-4-5's published prices, USD per million tokens, written here
#: so the test prices what the API billed without the product's price table.
HAIKU_45 = {"input_tokens": 1.00, "output_tokens": 5.00, "cache_creation_input_tokens": 1.25,
            "cache_read_input_tokens": 0.10}
#: The Message Batches discount.
BATCH_PRICE = 0.5


def billed_usd(stats) -> float:
    """What the emulator billed (its own token counts), priced by the test."""
    total = 0.0
    for tier, share in (("standard", 1.0), ("batch", BATCH_PRICE)):
        tokens = stats["tokens"].get(tier, {})
        total += share * sum(tokens.get(k, 0) * usd for k, usd in HAIKU_45.items()) / 1e6
    return total


def test_budget_reserve_and_settle():
    b = Budget(1.0)
    assert b.reserve(0.6) and not b.reserve(0.5)
    b.settle(0.6, 0.1)
    assert b.reserve(0.5)
    assert b.committed_usd == pytest.approx(0.6)


@pytest.mark.parametrize("mode,cap", [("sync", 0.02), ("batch", 0.01), ("packed-batch", 0.03)])
def test_run_stops_at_the_cap_with_nothing_lost(emu, api_env, tmp_path, mode, cap):
    emu.reset()
    emu.configure(faults={}, batch_delay_s=0.0)
    data = tmp_path / "in.jsonl"
    datagen.write_jsonl(str(data), 80, seed=31, customers=4)
    out = tmp_path / "out"
    args = ["--task", "samples/sentiment.yaml", "--input", str(data), "--output", str(out), "--mode", mode,
            "--pack-key-field", "customer_id", "--api-base", emu.base_url, "--max-cost-usd", str(cap),
            "--allow-partial-budget", "--poll-interval-s", "0.05", "--concurrency", "2", "--run-id", f"budget-{mode}"]
    assert run(args) == EXIT_OK
    results, dead = read_output(str(out))
    assert_one_in_one_out(str(data), results, dead)
    assert results, "the cap leaves room for some records"
    assert dead and {d["error_type"] for d in dead} == {"budget"}
    spent = billed_usd(emu.stats(items=False))
    assert 0 < spent <= cap
    # and the rows' own cost columns add up to what was billed
    stamped = sum(r["cost_usd"] for r in results) + sum(d["cost_usd"] or 0 for d in dead)
    assert stamped == pytest.approx(spent, rel=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dead_letters_by_reason"] == {"budget": len(dead)}
