"""All four modes on the sample job, and the packed routes under faulty answers.

Every run checks one-in-one-out, and the emulator's own counts prove that no
record that was answered was ever sent again (duplicates_billed == 0)."""
from __future__ import annotations

import json

import pytest

from bench import datagen
from pipeline.run import EXIT_OK, run
from tests.conftest import assert_one_in_one_out, assert_packs_never_mix, read_output

SAMPLE = "samples/emails.jsonl"
TASK = "samples/sentiment.yaml"
MODES = ("sync", "packed", "batch", "packed-batch")


def _run_mode(emu, tmp_path, mode, input_path=SAMPLE, *extra):
    out = tmp_path / mode
    args = ["--task", TASK, "--input", input_path, "--output", str(out), "--mode", mode,
            "--pack-key-field", "customer_id", "--api-base", emu.base_url,
            "--poll-interval-s", "0.05", "--poll-max-interval-s", "0.2", "--concurrency", "8", *extra]
    assert run(args) == EXIT_OK
    results, dead = read_output(str(out))
    assert_one_in_one_out(input_path, results, dead)
    return results, dead, json.loads((out / "summary.json").read_text())


def test_all_modes_give_the_same_ids_and_answers(clean_emu, api_env, tmp_path):
    outputs = {}
    costs = {}
    for mode in MODES:
        clean_emu.reset()
        results, dead, summary = _run_mode(clean_emu, tmp_path, mode)
        assert all(r["output"] is not None for r in results)
        assert all(r["mode"] == mode for r in results)
        outputs[mode] = {r["record_id"]: r["output"] for r in results}
        costs[mode] = summary["cost_usd"]
        assert clean_emu.stats()["duplicates_billed"] == 0
        if mode in ("packed", "packed-batch"):
            assert max(r["pack_size"] for r in results) > 1
            # identity isolation, against the input's own customer_id (not a column we stamp)
            assert_packs_never_mix(SAMPLE, results)
    ids = set(outputs["sync"])
    for mode in MODES:
        assert set(outputs[mode]) == ids, mode
    # answers are matched by id: the emulator answers from the content, so every mode agrees
    for mode in MODES[1:]:
        assert outputs[mode] == outputs["sync"], mode
    assert costs["batch"] == pytest.approx(costs["sync"] / 2, rel=0.05)
    assert costs["packed-batch"] < costs["packed"] < costs["sync"]


PACK_FAULTS = [
    {"pack_drop_ids": {"rate": 0.5, "count": 2}},
    {"pack_duplicate_ids": {"rate": 0.5, "count": 1}},
    {"pack_invent_ids": {"rate": 1.0, "count": 2}},
    {"pack_invalid_json": {"rate": 0.3}},
    {"pack_max_tokens": {"rate": 0.3}},
    {"pack_ignore_schema": {"rate": 0.5, "count": 1}},
]


@pytest.mark.parametrize("mode", ["packed", "packed-batch"])
@pytest.mark.parametrize("faults", PACK_FAULTS, ids=lambda f: next(iter(f)))
def test_faulty_pack_answers_lose_nothing_and_bill_nothing_twice(clean_emu, api_env, tmp_path, mode, faults):
    data = tmp_path / "in.jsonl"
    datagen.write_jsonl(str(data), 120, seed=7, customers=6)
    clean_emu.configure(faults=faults, seed=11)
    results, dead, summary = _run_mode(clean_emu, tmp_path, mode, str(data))
    stats = clean_emu.stats()
    assert stats["duplicates_billed"] == 0
    assert sum(stats["faults_fired"].values()) > 0, "the fault never fired: the test proves nothing"
    # every failure was re-asked until it succeeded or ran out of re-asks
    assert len(results) + len(dead) == 120
    for d in dead:
        assert d["error_type"] in {"missing_in_pack", "duplicated_in_pack", "invalid_json",
                                   "schema_invalid", "max_tokens"}, d
    if "pack_invent_ids" in faults:
        assert not dead  # invented ids are dropped, nothing else is wrong
    assert_packs_never_mix(str(data), results)
    # a fault that fired on a pack of several records forces a re-ask, and a re-asked record says so
    if "pack_invent_ids" not in faults:
        assert any(r["attempts"] > 1 for r in results) or dead
    # tokens of every request, failed ones included, are accounted for exactly
    billed = stats["tokens"]["batch" if mode == "packed-batch" else "standard"]
    out_in = sum(r["input_tokens"] for r in results) + sum(d["input_tokens"] or 0 for d in dead)
    assert out_in == billed["input_tokens"]
