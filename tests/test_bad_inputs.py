"""The bad-input corpus (tests/data/make_bad_inputs.py) through every mode.

For each of sync, packed, batch and packed-batch, against the emulator:

- one in, one out (every line is exactly one result or one dead letter);
- every expected dead letter, with its expected reason, at its line / id;
- every expected result, and nothing else as a result;
- nothing billed twice (the emulator's duplicates_billed == 0);
- none may change another record's answer: the good records' answers equal
  the answers the same records get when they run alone, in a clean input of
  only them (the emulator answers deterministically from content, so any
  difference means a bad line leaked into a good record's prompt or answer).
"""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from pipeline.run import EXIT_OK, run
from tests.conftest import assert_one_in_one_out, read_output
from transforms.screen.injection import scan
from transforms.screen.patterns import load_patterns

ROOT = Path(__file__).resolve().parents[1]
TASK = str(ROOT / "samples" / "sentiment.yaml")
MODES = ("sync", "packed", "batch", "packed-batch")

_spec = importlib.util.spec_from_file_location("make_bad_inputs", ROOT / "tests" / "data" / "make_bad_inputs.py")
make_bad_inputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_bad_inputs)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(corpus path, expectations, clean path holding only the lines that should give results)."""
    folder = tmp_path_factory.mktemp("bad_inputs")
    path = folder / "bad_inputs.jsonl"
    expected = make_bad_inputs.write_bad_inputs(path)
    committed = json.loads((ROOT / "tests" / "data" / "bad_inputs_expected.json").read_text(encoding="utf-8"))
    assert expected == committed, "run python tests/data/make_bad_inputs.py --write-expected"
    lines = path.read_bytes().split(b"\n")
    clean = folder / "clean.jsonl"
    good = sorted(e["line"] for e in expected.values() if e["outcome"] == "result")
    clean.write_bytes(b"".join(lines[n - 1] + b"\n" for n in good))
    return path, expected, clean


def _run(emu, out: Path, mode: str, input_path: Path):
    args = ["--task", TASK, "--input", str(input_path), "--output", str(out), "--mode", mode,
            "--pack-key-field", "customer_id", "--api-base", emu.base_url,
            "--poll-interval-s", "0.05", "--poll-max-interval-s", "0.2", "--concurrency", "8"]
    assert run(args) == EXIT_OK
    results, dead = read_output(str(out))
    assert_one_in_one_out(str(input_path), results, dead)
    return results, dead


_LINE = re.compile(r":(\d+)$|\(row (\d+)\)$")


def _line_of(dead_row) -> int:
    """The input line a dead letter names in `source` (`path:N` or `path (row N)`)."""
    m = _LINE.search(dead_row["source"] or "")
    assert m, dead_row
    return int(m.group(1) or m.group(2))


@pytest.mark.parametrize("mode", MODES)
def test_the_bad_input_corpus_in_every_mode(clean_emu, api_env, tmp_path, corpus, mode):
    path, expected, clean = corpus
    results, dead = _run(clean_emu, tmp_path / "corpus", mode, path)
    assert clean_emu.stats()["duplicates_billed"] == 0

    # every expected dead letter, with its reason, at its line (and with its id when it has one)
    unmatched = list(dead)
    for label, e in expected.items():
        if e["outcome"] != "dead_letter":
            continue
        hits = [d for d in unmatched
                if d["error_type"] == e["reason"] and _line_of(d) == e["line"]
                and (e["id"] is None or d["record_id"] == e["id"])]
        assert len(hits) == 1, f"{label}: expected one {e['reason']} dead letter at line {e['line']}, " \
                               f"got {[(d['error_type'], d['source'], d['record_id']) for d in dead]}"
        unmatched.remove(hits[0])
        if e["id"] is None:
            assert hits[0]["record_id"] is None, label
    assert unmatched == [], f"dead letters nobody expected: {[(d['error_type'], d['source']) for d in unmatched]}"

    # every expected result, and only those
    want = sorted(e["id"] for e in expected.values() if e["outcome"] == "result")
    assert sorted(r["record_id"] for r in results) == want
    assert all(r["output"] is not None and r["mode"] == mode for r in results)
    # the first of the two duplicate lines won (its answer is compared with the clean run below,
    # which holds only the first copy); the second is the dead letter
    duplicate = next(d for d in dead if d["error_type"] == "duplicate_id")
    assert "Second copy" in duplicate["raw"]
    if mode in ("packed", "packed-batch"):
        assert max(r["pack_size"] for r in results) > 1, "the adversarial texts were never packed with others"
    # once the injection screen is wired in (default policy: flag), the adversarial texts carry
    # exactly the flags the screen finds in them, and nothing else is flagged
    if any(r.get("injection_flags") for r in results):
        patterns = load_patterns()
        lines = path.read_bytes().split(b"\n")
        texts = {e["id"]: json.loads(lines[e["line"] - 1])["text"]
                 for e in expected.values() if e["outcome"] == "result"}
        flagged = {r["record_id"]: set(r["injection_flags"]) for r in results if r["injection_flags"]}
        assert flagged == {i: set(scan(t, patterns)) for i, t in texts.items() if scan(t, patterns)}

    # none may change another record's answer: the same records, alone, give the same answers
    clean_emu.reset()
    alone, alone_dead = _run(clean_emu, tmp_path / "clean", mode, clean)
    assert alone_dead == []
    assert clean_emu.stats()["duplicates_billed"] == 0
    answers_alone = {r["record_id"]: r["output"] for r in alone}
    answers_in_corpus = {r["record_id"]: r["output"] for r in results}
    assert answers_in_corpus == answers_alone
