"""The DirectRunner with two worker processes gives the same answers as one process."""
from __future__ import annotations

import pytest

from pipeline.run import EXIT_OK, run
from tests.conftest import assert_one_in_one_out, read_output

SAMPLE = "samples/emails.jsonl"


@pytest.mark.parametrize("mode", ["packed-batch"])
def test_two_worker_processes_match_one(emu, api_env, tmp_path, mode):
    outputs = {}
    for name, extra in (("single", []),
                        ("multi", ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"])):
        emu.reset()
        out = tmp_path / name
        args = ["--task", "samples/sentiment.yaml", "--input", SAMPLE, "--output", str(out), "--mode", mode,
                "--pack-key-field", "customer_id", "--api-base", emu.base_url, "--poll-interval-s", "0.05",
                "--run-id", f"multi-{mode}", *extra]
        assert run(args) == EXIT_OK
        results, dead = read_output(str(out))
        assert_one_in_one_out(SAMPLE, results, dead)
        assert emu.stats()["duplicates_billed"] == 0
        outputs[name] = ({r["record_id"]: r["output"] for r in results},
                         sorted((d["record_id"] or "", d["error_type"]) for d in dead))
    assert outputs["multi"] == outputs["single"]
