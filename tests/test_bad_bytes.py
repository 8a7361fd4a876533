"""Undecodable bytes in every column of every input format, in every mode (issue #18).

One input folder per mode holds a CSV, a JSONL, a gzipped JSONL and a Parquet
file; each has one row per "kind" below, the kind naming the column that
holds bytes that are not UTF-8 (raw bytes in CSV, Parquet and one JSONL line;
lone surrogates written as JSON escapes in the JSONL lines). The rule
(docs/decisions.md, "Undecodable bytes"):

- a field the product uses (the id, the text, the pack key, a template
  field) that is not valid UTF-8 makes the record an `invalid_utf8` dead
  letter (with no record_id when the id itself is bad);
- a JSONL line that is not UTF-8 is an `invalid_utf8` dead letter whole;
- a column nothing uses is ignored: the record gets its answer;
- every text written (raw, error_message, source...) shows the bytes as
  escapes (\\xff), never as an exception.

Checked: exit 0, one output row per input row (ids read back == ids of the
input; rows without a readable id by count), the reasons expected from the
input itself, readable Parquet, and no dead-lettered record ever sent to the
API (the emulator's per-id counters).
"""
from __future__ import annotations

import collections
import csv
import gzip
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.run import EXIT_OK, run
from tests.conftest import read_output

ROOT = Path(__file__).resolve().parents[1]
TASK = str(ROOT / "samples" / "sentiment.yaml")
MODES = ("sync", "packed", "batch", "packed-batch")
COLUMNS = ("id", "customer_id", "channel", "subject", "text", "notes")
BAD = "\udcff\udcfe"  # b"\xff\xfe" decoded with surrogateescape

#: kind -> the columns that hold bad bytes in that row.
KINDS = {
    "good": (),
    "bad_id": ("id",),
    "bad_text": ("text",),
    "bad_key": ("customer_id",),
    "bad_channel": ("channel",),   # a template field
    "bad_subject": ("subject",),   # another template field
    "bad_notes": ("notes",),       # a column nothing uses
    "bad_all": COLUMNS,
}
#: Columns whose bad bytes make the record a dead letter (the product uses them).
USED = {"id", "customer_id", "channel", "subject", "text"}


def _row(fmt: str, kind: str) -> dict:
    row = {"id": f"{fmt}-{kind}", "customer_id": f"cust-{kind}", "channel": "email",
           "subject": "Order", "text": f"My order for {kind} arrived late and broken.", "notes": "n/a"}
    for column in KINDS[kind]:
        row[column] = row[column] + " " + BAD
    return row


def _expected(row: dict, line_is_utf8: bool = True):
    """(record id or None, expected dead-letter reason or None for a result), from the row itself."""
    def bad(value: str) -> bool:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False

    if not line_is_utf8:
        return None, "invalid_utf8"
    record_id = None if bad(row["id"]) else row["id"]
    if any(bad(row[c]) for c in USED):
        return record_id, "invalid_utf8"
    return record_id, None


def _bytes(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def write_inputs(folder: Path):
    """Writes the four files; returns the expected (id, reason) of every input row."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = []
    # CSV: raw bytes in the file.
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    for kind in KINDS:
        row = _row("csv", kind)
        writer.writerow(row)
        expected.append(_expected(row))
    (folder / "rows.csv").write_bytes(_bytes(buf.getvalue()))
    # JSONL (and gzipped): lone surrogates as JSON escapes (valid UTF-8 lines,
    # per-field rule), plus lines holding raw bytes (not UTF-8: dead whole).
    for fmt, name, opener in (("jsonl", "rows.jsonl", open), ("jsonlgz", "rows.jsonl.gz", gzip.open)):
        lines = []
        for kind in KINDS:
            row = _row(fmt, kind)
            lines.append(json.dumps(row, ensure_ascii=True).encode("ascii"))
            expected.append(_expected(row))
        # a high surrogate (no surrogateescape byte) in the id and the text
        row = _row(fmt, "good") | {"id": f"{fmt}-surrogate-\ud800", "text": "lone \ud800 surrogate"}
        lines.append(json.dumps(row, ensure_ascii=True).encode("ascii"))
        expected.append(_expected(row))
        for kind in ("bad_notes", "bad_all"):
            row = _row(fmt + "-raw", kind)
            lines.append(_bytes(json.dumps(row, ensure_ascii=False)))
            expected.append(_expected(row, line_is_utf8=False))
        with opener(folder / name, "wb") as f:
            f.write(b"\n".join(lines) + b"\n")
    # Parquet: invalid UTF-8 inside string columns.
    rows = [_row("parquet", kind) for kind in KINDS]
    expected += [_expected(r) for r in rows]
    table = pa.table({c: pa.array([_bytes(r[c]) for r in rows], type=pa.binary()).view(pa.string())
                      for c in COLUMNS})
    pq.write_table(table, folder / "rows.parquet")
    return expected


def _escaped(value: str) -> str:
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@pytest.mark.parametrize("mode", MODES)
def test_bad_bytes_every_format(tmp_path, clean_emu, api_env, mode):
    expected = write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    args = ["--task", TASK, "--input", str(tmp_path / "in" / "*"), "--output", str(out), "--mode", mode,
            "--pack-key-field", "customer_id", "--api-base", clean_emu.base_url,
            "--poll-interval-s", "0.05", "--poll-max-interval-s", "0.2", "--concurrency", "4"]
    assert run(args) == EXIT_OK
    results, dead = read_output(str(out))  # every Parquet file readable

    # one in, one out
    assert len(results) + len(dead) == len(expected)
    out_ids = collections.Counter([r["record_id"] for r in results] + [d["record_id"] for d in dead])
    in_ids = collections.Counter(record_id for record_id, _ in expected)
    assert out_ids == in_ids

    # the reasons, from the input
    got = {r["record_id"]: None for r in results}
    got.update({d["record_id"]: d["error_type"] for d in dead if d["record_id"] is not None})
    want = {record_id: reason for record_id, reason in expected if record_id is not None}
    assert got == want
    anonymous = sorted(d["error_type"] for d in dead if d["record_id"] is None)
    assert anonymous == sorted(reason for record_id, reason in expected if record_id is None)

    # every text column is valid UTF-8 (Parquet read back), and the bad bytes show as escapes
    for d in dead:
        # raw bytes show as \xff; a JSONL line's own JSON escapes (\udcff) are kept as written
        assert any(e in d["raw"] for e in ("\\xff\\xfe", "\\udcff\\udcfe", "\\ud800")), d
        for column in ("raw", "error_message", "source", "pack_key", "record_id"):
            if d[column] is not None:
                d[column].encode("utf-8")
    for r in results:
        assert r["pack_key"] is None or r["pack_key"].startswith("cust-")

    # nothing dead-lettered was ever sent (or billed)
    stats = clean_emu.stats()
    sent = set(stats["items_sent"]) | set(stats["items_answered"])
    dead_ids = {d["record_id"] for d in dead}
    assert not sent & dead_ids, sent & dead_ids
    for key in sent:
        _escaped(key).encode("utf-8")
        assert BAD not in key and "\\x" not in key
    assert {r["record_id"] for r in results} <= sent


# --- the pieces, one by one -------------------------------------------------

@pytest.mark.parametrize("value, shown", [
    ("plain", "plain"),
    ("caf\u00e9", "caf\u00e9"),
    ("a \udcff\udcfe b", "a \\xff\\xfe b"),   # undecodable bytes: the bytes
    ("lone \ud800", "lone \\ud800"),            # another lone surrogate: its code point
])
def test_safe_text(value, shown):
    from transforms.io.normalize import safe_text
    assert safe_text(value) == shown
    safe_text(value).encode("utf-8")


def test_raw_to_text_escapes_dicts_and_strings():
    from transforms.io.normalize import raw_to_text
    assert raw_to_text({"id": "x\udcff"}) == '{"id": "x\\xff"}'
    assert raw_to_text("x\ud800\udcfe") == "x\\ud800\\xfe"
    assert raw_to_text(b"x\xff") == "x\\xff"


@pytest.mark.parametrize("row, reason, has_id", [
    ({"id": "a\udcff", "text": "hi"}, "invalid_utf8", False),
    ({"id": "a\ud800", "text": "hi"}, "invalid_utf8", False),
    ({"id": "a", "text": "hi \udcff"}, "invalid_utf8", True),
    ({"id": "a", "text": "hi", "k": "key \udcff"}, "invalid_utf8", True),
    ({"id": "a", "text": "hi", "k": "key", "unused": "\udcff"}, None, True),
])
def test_normalize_rule(row, reason, has_id):
    from transforms.io.normalize import FieldMap, normalize_row
    from transforms.records import DeadLetter
    out = normalize_row(row, FieldMap(pack_key_field="k"), "src:1")
    if reason is None:
        assert not isinstance(out, DeadLetter)
        return
    assert isinstance(out, DeadLetter) and out.error_type == reason
    assert (out.record_id is not None) == has_id
    out.raw.encode("utf-8")


def test_dead_letter_row_escapes_every_text():
    from transforms.prompts.outcomes import dead_letter_row
    from transforms.records import DeadLetter
    row = dead_letter_row(DeadLetter("id\udcff", "k\udcff", "read", "invalid_utf8", "bad \udcff",
                                     raw="r\udcff", source="f\udcff.csv:1"), "run", "sync")
    assert (row["record_id"], row["pack_key"], row["error_message"], row["raw"], row["source"]) == (
        "id\\xff", "k\\xff", "bad \\xff", "r\\xff", "f\\xff.csv:1")


def test_parquet_rows_not_utf8():
    from transforms.io.read import _parquet_rows
    table = pa.table({"id": pa.array([b"ok", b"x\xff", None], type=pa.binary()).view(pa.string()),
                      "n": [1, 2, 3]})
    (batch,) = table.to_batches()
    assert _parquet_rows(batch) == [{"id": "ok", "n": 1}, {"id": "x\udcff", "n": 2}, {"id": None, "n": 3}]


def test_requests_file_keeps_unused_bad_bytes(tmp_path):
    from transforms.batches import lifecycle
    from transforms.records import Record
    records = {"a": Record("a", "k", "text", {"notes": "x\udcff", "n": "caf\u00e9"})}
    path = str(tmp_path / "r.json.zst")
    lifecycle.write_requests(path, [], records)
    assert lifecycle.read_requests(path)[1] == records
