"""Shared fixtures: the real emulator on loopback, and Parquet read-back helpers."""
from __future__ import annotations

import collections
import glob
import json
import os
import time

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
def clean_emu(emu):
    """The session emulator reset, without faults, batch delays or expiry
    (whatever an earlier test left)."""
    emu.reset()
    emu.configure(faults={}, batch_delay_s=0.0, batch_expire_after_s=None)
    yield emu
    emu.configure(faults={})


@pytest.fixture
def api_env(monkeypatch):
    """A key in the environment, as on a real worker (the emulator accepts any key)."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key-not-a-secret")
    return "test-key-not-a-secret"


def wait_until_ended(retrieve, batch_id: str, timeout_s: float = 15.0):
    """Poll `retrieve(batch_id)` (the SDK's or BatchCalls') until the batch has
    ended; fail the test when it has not within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        batch = retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        assert time.monotonic() < deadline, f"batch {batch_id} still {batch.processing_status}"
        time.sleep(0.02)


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


def input_rows(path: str):
    """Each JSONL line of the input as the test reads it: a dict, or None when
    the line is not a JSON object (the product must dead-letter it)."""
    rows = []
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            rows.append(row if isinstance(row, dict) else None)
    return rows


def _usable_id(row):
    """The id the product should read from a row, or None when it has none."""
    if row is None or "id" not in row:
        return None
    value = row["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    text = str(value)
    return text if text.strip() else None


def valid_input_ids(path: str):
    """Ids of the lines that parse as objects with a usable id (every occurrence)."""
    return [i for i in map(_usable_id, input_rows(path)) if i is not None]


def assert_one_in_one_out(input_path: str, results, dead):
    """The product's promise, with the oracle taken from the input file:

    - exactly one output row per input line;
    - the multiset of ids written equals the multiset of usable ids read
      (a record written twice, or dropped, changes the counts);
    - every id appears in `results` at most once, and an id repeated in the
      input has exactly one row that is not a `duplicate_id` dead letter;
    - a line without a usable id is a dead letter without an id.
    """
    rows = input_rows(input_path)
    assert len(results) + len(dead) == len(rows)
    ids_in = collections.Counter(valid_input_ids(input_path))
    ids_out = collections.Counter([r["record_id"] for r in results]
                                  + [d["record_id"] for d in dead if d["record_id"] is not None])
    assert ids_out == ids_in, {"missing": ids_in - ids_out, "extra": ids_out - ids_in}
    result_ids = collections.Counter(r["record_id"] for r in results)
    assert all(n == 1 for n in result_ids.values()), [i for i, n in result_ids.items() if n > 1]
    duplicates = collections.Counter(d["record_id"] for d in dead if d["error_type"] == "duplicate_id")
    for record_id, n in ids_in.items():
        assert duplicates[record_id] == n - 1, (record_id, n, duplicates[record_id])
    no_id = sum(1 for row in rows if _usable_id(row) is None)
    assert sum(1 for d in dead if d["record_id"] is None) == no_id


def assert_packs_never_mix(input_path: str, results, key_field: str = "customer_id"):
    """Tenant isolation, checked against the input file's own pack-key field:
    every two records sharing a pack_id (or a custom_id) have the same value
    there (a record without the field is never packed with another)."""
    key_of = {}
    for row in input_rows(input_path):
        record_id = _usable_id(row)
        if record_id is not None and record_id not in key_of:
            key_of[record_id] = row.get(key_field)
    for column in ("pack_id", "custom_id"):
        groups = collections.defaultdict(list)
        for r in results:
            if r[column]:
                groups[r[column]].append(r["record_id"])
        for members in groups.values():
            keys = {key_of[m] for m in members}
            assert len(keys) == 1 and (None not in keys or len(members) == 1), (column, members, keys)


def pytest_collection_modifyitems(config, items):
    """Run the `slow` tests (installs into fresh venvs, minutes of pip) first.

    With `-n 2` they then overlap the rest of the suite on the other worker
    instead of forming a tail at the end. A stable sort keeps every other
    test in file order, and every xdist worker computes the same order, as it
    must.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
