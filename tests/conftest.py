"""Shared fixtures: the real emulator on loopback, and Parquet read-back helpers."""
from __future__ import annotations

import glob
import json
import os

import pyarrow.parquet as pq
import pytest


#: The prefix of real Anthropic keys, assembled at run time: tests need keys
#: that look real (the leak detectors look for this prefix), but no committed
#: line may look like a key to a secret scanner.
KEY_PREFIX = "-".join(("sk", "ant", "api03")) + "-"


def fake_key(tag: str) -> str:
    """A key-shaped string that is not a key: KEY_PREFIX + tag."""
    return KEY_PREFIX + tag


@pytest.fixture(scope="session")
def emu():
    """One emulator for the session; tests reset it (or reconfigure) as needed."""
    import emulator
    with emulator.running() as e:
        yield e


@pytest.fixture
def api_env(monkeypatch):
    """A key in the environment, as on a real worker (the emulator accepts any key)."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key-not-a-secret")
    return "test-key-not-a-secret"


def read_rows(directory: str):
    files = sorted(glob.glob(os.path.join(directory, "*.parquet")))
    assert files, f"no Parquet files in {directory}"
    rows = []
    for path in files:
        rows += pq.read_table(path).to_pylist()
    return rows


def read_output(output: str):
    return read_rows(os.path.join(output, "results")), read_rows(os.path.join(output, "dead_letter"))


def count_input_rows(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def valid_input_ids(path: str):
    """Ids of the lines that parse as objects with a usable id (first occurrence)."""
    ids = []
    with open(path, "rb") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("id"), (str, int)) and not isinstance(row.get("id"), bool):
                ids.append(str(row["id"]))
    return ids


def assert_one_in_one_out(input_path: str, results, dead):
    """The product's promise: every input row is exactly one output row, and
    every id that was readable appears exactly once across the two outputs."""
    assert len(results) + len(dead) == count_input_rows(input_path)
    out_ids = [r["record_id"] for r in results] + [d["record_id"] for d in dead if d["record_id"] is not None]
    in_ids = valid_input_ids(input_path)
    assert sorted(set(out_ids)) == sorted(set(i for i in in_ids if i.strip()))
    # duplicates in the input are the only ids allowed twice (once a result, once duplicate_id)
    dup_rows = [d for d in dead if d["error_type"] == "duplicate_id"]
    assert len(out_ids) == len(set(out_ids)) + len(dup_rows)


def pytest_collection_modifyitems(config, items):
    """Run the `slow` tests (installs into fresh venvs, minutes of pip) first.

    With `-n 2` they then overlap the rest of the suite on the other worker
    instead of forming a tail at the end. A stable sort keeps every other
    test in file order, and every xdist worker computes the same order, as it
    must.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
