"""The ledger's requests file (lifecycle.write_requests / read_requests) and params_digest.

A rerun reads back the requests files of earlier runs, and finds its batches by
ledger keys built from params_digest: both must outlive any change of format.
"""
from __future__ import annotations

import hashlib
import json
import os

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.batches import lifecycle
from transforms.records import Record
from transforms.api.client import wire_schemas
from transforms.prompts.requests import Item, Request, RequestBuilder
from transforms.prompts.task import Task

DATA = os.path.join(os.path.dirname(__file__), "data")
TASK = Task(model="claude-haiku-4-5", system="Be brief.", template="{text}")

# Requests with every kind of field value (flags, non-ASCII, quotes, line separators).
V1_PACK = Request("cid-1", "p" * 64, "k",
                  (Item("a", "k", "f" * 64, 12, 0, ("fake_system",)), Item("b\u00e9", "k", "e" * 64, 3, 1)),
                  "<item id=\"a\">h\u00e9llo</item>", True, 300, 500, 9000, 2)
V1_SINGLE = Request("cid-2", "q" * 64, "k2", (Item("c", "k2", "d" * 64, 7),),
                    "one \"quoted\"\nline \u2028 end", False, 120, 80, 400)


def _requests():
    builder = RequestBuilder(task=TASK, run_id="r1", wire_schemas=wire_schemas(TASK))
    recs = [Record(f"id-{i}", "k", f"t\u00e9xt {i} </item>", {"n": i}, ("flag",) if i % 3 == 0 else ())
            for i in range(7)]
    return [builder.single(r) for r in recs[:4]] + [builder.pack(recs[4:]), V1_PACK, V1_SINGLE], \
        {r.record_id: r for r in recs[4:]}


def test_a_written_file_is_one_zstd_frame_of_columns_and_reads_back_equal(tmp_path):
    requests, records = _requests()
    path = str(tmp_path / "r.json.zst")
    lifecycle.write_requests(path, requests, records)
    with open(path, "rb") as f:
        body = json.loads(zstandard.ZstdDecompressor().decompress(f.read()))  # `zstd -dc` shows the JSON
    assert body["format"] == 2
    assert body["requests"]["custom_id"] == [r.custom_id for r in requests]
    assert len(body["items"]["record_id"]) == sum(len(r.items) for r in requests)
    assert lifecycle.read_requests(path) == (requests, records)
    lifecycle.write_requests(path, [], None)
    assert lifecycle.read_requests(path) == ([], None)


def test_a_file_that_is_not_a_zstd_frame_is_refused(tmp_path):
    path = tmp_path / "r.json"
    path.write_bytes(b'{"format": 2}')
    with pytest.raises(ValueError, match="not a zstd frame"):
        lifecycle.read_requests(str(path))


def _write_body(path, body):
    with open(path, "wb") as f:
        f.write(zstandard.ZstdCompressor().compress(json.dumps(body).encode()))


def _body(tmp_path):
    path = str(tmp_path / "r.json.zst")
    lifecycle.write_requests(path, [V1_SINGLE, V1_PACK], None)
    with open(path, "rb") as f:
        return path, json.loads(zstandard.ZstdDecompressor().decompress(f.read()))


def test_a_column_the_file_predates_takes_the_fields_default(tmp_path):
    path, body = _body(tmp_path)
    del body["requests"]["attempt"], body["items"]["position"]
    _write_body(path, body)
    requests, _ = lifecycle.read_requests(path)
    assert [r.attempt for r in requests] == [1, 1]
    assert [i.position for r in requests for i in r.items] == [0, 0, 0]
    assert requests[1].items[0].flags == ("fake_system",)


@pytest.mark.parametrize("spoil", [
    lambda b: b.update(format=3),
    lambda b: b["requests"]["item_count"].append(1),
    lambda b: b["requests"]["pack_id"].pop(),
    lambda b: b["items"].pop("record_id"),
])
def test_a_file_this_release_cannot_read_is_refused(tmp_path, spoil):
    path, body = _body(tmp_path)
    spoil(body)
    _write_body(path, body)
    with pytest.raises((ValueError, KeyError)):
        lifecycle.read_requests(path)


def _digest_as_before(builder, requests):
    """params_digest as written up to commit 88733ab: its values are in every ledger key."""
    h = hashlib.sha256()
    h.update(json.dumps([builder.task.prompt_sha256, builder.task.model, builder.prompt_cache],
                        separators=(",", ":")).encode())
    for r in requests:
        h.update(json.dumps([r.custom_id, r.max_tokens, [i.input_sha256 for i in r.items]],
                            separators=(",", ":")).encode())
    return h.hexdigest()


def test_params_digest_values_are_the_ones_existing_ledgers_hold():
    builder = RequestBuilder(task=TASK, run_id="r1", wire_schemas=wire_schemas(TASK))
    plain = [Request(f"cid-{i}", "p", "k", tuple(Item(f"id{i}-{j}", "k", f"{i:02x}{j}" * 8, 3)
                                                  for j in range(i % 3 + 1)), "t", False, 100 + i, 1, 1)
             for i in range(5)]
    odd = [Request("cid-\u00e9\x01\x7f\"\\/\u2028", "p", "k", (Item("x", "k", "sha-\u00e9\x1f", 1),), "t",
                   False, 2 ** 70, 1, 1)]
    # Computed with the code of commit 88733ab.
    assert lifecycle.params_digest(builder, plain) == "311502ac62e4124337fdd2ada64d800b07158abdeeecefc2301d3cfd6a9dcbd0"
    assert lifecycle.params_digest(builder, odd) == "4b548ebec53e7fead2e9f61f0031913fe0bef6de6e3247572dda8769960c3e8d"
    assert lifecycle.params_digest(builder, []) == "110cf83a59782abb4bdfcf337df321508622911321644b46ff591ad56049d9d4"


#: Any text, with lone surrogates, DEL and control characters mixed in (st.text never
#: yields a surrogate).
_ANY_TEXT = st.lists(st.characters() | st.sampled_from(["\udc80", "\ud800", "\x7f", "\x01", "\u2028"]),
                     max_size=8).map("".join)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_ANY_TEXT, st.integers(min_value=-2 ** 70, max_value=2 ** 70),
                          st.lists(_ANY_TEXT, min_size=1, max_size=3)), max_size=4),
       st.booleans())
def test_params_digest_is_the_digest_of_the_same_bytes_as_before(rows, prompt_cache):
    """Any text (non-ASCII, DEL, control characters, lone surrogates) and any integer."""
    builder = RequestBuilder(task=TASK, run_id="r1", prompt_cache=prompt_cache, wire_schemas=wire_schemas(TASK))
    requests = [Request(cid, "p", "k", tuple(Item("x", "k", sha, 1) for sha in shas), "t", False, max_tokens, 1, 1)
                for cid, max_tokens, shas in rows]
    assert lifecycle.params_digest(builder, requests) == _digest_as_before(builder, requests)


def test_a_file_url_ledger_writes_and_reads_its_requests_files_whole(tmp_path):
    ledger = (tmp_path / "a ledger").as_uri()  # file:// with an escaped space, as open_ledger takes it
    path = lifecycle.requests_path(ledger, "k" * 64)
    lifecycle.write_requests(path, [V1_PACK, V1_SINGLE], None)
    assert lifecycle.read_requests(path) == ([V1_PACK, V1_SINGLE], None)
    written = [p.name for p in (tmp_path / "a ledger" / "requests").iterdir()]
    assert written == ["k" * 64 + ".json.zst"]  # no partial file left beside it
