"""ProcessWithClaude as a library: the README's example run end to end against
the emulator, in this process, with its oracle taken from the example's input."""
from __future__ import annotations

import collections
import importlib.util
import os

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.testing.test_stream import TestStream as _TestStream

from tests.conftest import read_output
from transforms import ApiSettings, FieldMap, ProcessWithClaude
from transforms.process import _for_input

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "samples", "library_example.py")


def _example():
    spec = importlib.util.spec_from_file_location("library_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _children() -> list:
    """Child processes of this process (from /proc: no helper may be started)."""
    pid = os.getpid()
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(name))
    return out


def test_the_readme_shows_the_example_verbatim():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    with open(EXAMPLE, encoding="utf-8") as f:
        code = f.read()
    body = code[code.index("import sys"):code.index('\n\nif __name__')]
    assert body in readme


def test_the_example_runs_one_row_per_input_row(emu, api_env, tmp_path):
    emu.reset()
    example = _example()
    before = set(_children())
    example.run(emu.base_url, str(tmp_path / "ledger"), str(tmp_path / "out"))
    assert set(_children()) <= before, "the transform started a process"
    results, dead = read_output(str(tmp_path / "out"))
    # Oracle from the input: every row is one output row; the repeated id is
    # answered once and dead-lettered once; the row without an id is a dead letter.
    tickets = example.TICKETS
    assert len(results) + len(dead) == len(tickets)
    ids_in = collections.Counter(t.get("id") for t in tickets)
    ids_out = collections.Counter([r["record_id"] for r in results] + [d["record_id"] for d in dead])
    assert ids_out == ids_in
    assert sorted(r["record_id"] for r in results) == ["t-1", "t-2", "t-3"]
    assert sorted((d["record_id"] or "", d["error_type"]) for d in dead) == [("", "missing_id"),
                                                                              ("t-3", "duplicate_id")]
    # Packs never mix customers: every pair sharing a pack holds one customer_id of the input.
    customer = {t["id"]: t["customer_id"] for t in tickets if "id" in t}
    by_pack = collections.defaultdict(set)
    for r in results:
        by_pack[r["pack_id"]].add(customer[r["record_id"]])
    assert all(len(c) == 1 for c in by_pack.values())
    # What the API billed: one batch, as many requests as there are customers.
    stats = emu.stats()
    assert stats["batches_created"] == 1 and stats["batch_requests_received"] == 2
    assert {r["api_base"] for r in results} == {emu.base_url}
    assert all(r["batch_id"] for r in results)


def test_a_rerun_with_the_same_ledger_pays_nothing(emu, api_env, tmp_path):
    emu.reset()
    example = _example()
    example.run(emu.base_url, str(tmp_path / "ledger"), str(tmp_path / "a"))
    example.run(emu.base_url, str(tmp_path / "ledger"), str(tmp_path / "b"))
    assert emu.stats()["batches_created"] == 1
    first, second = read_output(str(tmp_path / "a"))[0], read_output(str(tmp_path / "b"))[0]
    assert sorted(r["custom_id"] for r in first) == sorted(r["custom_id"] for r in second)


@pytest.mark.parametrize("mode", ["batch", "packed-batch"])
def test_batch_modes_need_a_ledger(mode):
    with pytest.raises(ValueError, match="needs a ledger"):
        ProcessWithClaude.from_task("samples/sentiment.yaml", mode=mode)


def test_auto_and_unknown_modes_are_refused():
    for mode in ("auto", "fast"):
        with pytest.raises(ValueError, match="mode must be one of"):
            ProcessWithClaude.from_task("samples/sentiment.yaml", mode=mode)


def test_streaming_is_taken_from_the_input():
    t = ProcessWithClaude.from_task("samples/sentiment.yaml", mode="sync", max_buffering_s=3.0)
    bounded = _for_input(t._s, bounded=True)
    streaming = _for_input(t._s, bounded=False)
    assert bounded.max_buffering_s is None and bounded.batch_bounds.max_buffering_s is None
    assert streaming.max_buffering_s == 3.0 and streaming.batch_bounds.max_buffering_s == 3.0
    with beam.Pipeline() as p:
        unbounded = p | _TestStream().add_elements([{"id": "a", "text": "x"}]).advance_watermark_to_infinity()
        assert not unbounded.is_bounded
        bounded_in = p | beam.Create([{"id": "a", "text": "x"}])
        assert bounded_in.is_bounded


def test_sync_mode_without_ledger_on_messages(emu, api_env, tmp_path):
    emu.reset()
    rows = [{"id": f"r{i}", "text": f"Ticket number {i}: the app crashes.", "channel": "app", "subject": "Bug"}
            for i in range(5)] + [{"id": "r9", "text": ""}]
    with beam.Pipeline() as p:
        out = (p | beam.Create(rows)
               | ProcessWithClaude.from_task("samples/sentiment.yaml", mode="sync",
                                             api=ApiSettings(base_url=emu.base_url),
                                             fields=FieldMap()))
        collected = (out["results"] | "r" >> beam.Map(lambda r: ("result", r["record_id"])),
                     out["dead_letter"] | "d" >> beam.Map(lambda d: (d["error_type"], d["record_id"])))
        flat = collected | beam.Flatten()
        assert_that(flat, equal_to(
            [("result", f"r{i}") for i in range(5)] + [("empty_text", "r9")]))
    assert emu.stats()["messages_calls"] == 5
