"""The ledger's requests file (lifecycle.write_requests / read_requests) and params_digest.

A rerun reads back the requests files of earlier runs, and finds its batches by
ledger keys built from params_digest: both must outlive any change of format.
"""
from __future__ import annotations

import hashlib
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from transforms import lifecycle
from transforms.requests import Item, Request, RequestBuilder
from transforms.task import Task

TASK = Task(model="claude-haiku-4-5", system="Be brief.", template="{text}")


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
    builder = RequestBuilder(task=TASK, run_id="r1")
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
    builder = RequestBuilder(task=TASK, run_id="r1", prompt_cache=prompt_cache)
    requests = [Request(cid, "p", "k", tuple(Item("x", "k", sha, 1) for sha in shas), "t", False, max_tokens, 1, 1)
                for cid, max_tokens, shas in rows]
    assert lifecycle.params_digest(builder, requests) == _digest_as_before(builder, requests)
