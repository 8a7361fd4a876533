"""The shared oracles can fail: each planted defect below is caught.

(A check that cannot fail is a defect of its own: these keep the helpers in
tests/conftest.py honest.)"""
from __future__ import annotations

import json

import pytest

from tests.conftest import assert_one_in_one_out, assert_packs_never_mix

LINES = [{"id": "a", "customer_id": "c1", "text": "x"}, {"id": "b", "customer_id": "c1", "text": "y"},
         {"id": "c", "customer_id": "c2", "text": "z"}, {"id": "a", "customer_id": "c1", "text": "again"}]


@pytest.fixture
def input_path(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in LINES) + "not json\n")
    return str(path)


def _result(record_id, pack_id="p", custom_id="k"):
    return {"record_id": record_id, "pack_id": pack_id, "custom_id": custom_id}


def _dead(record_id, error_type):
    return {"record_id": record_id, "error_type": error_type}


GOOD = ([_result("a"), _result("b"), _result("c")], [_dead("a", "duplicate_id"), _dead(None, "malformed_json")])


def test_the_correct_output_passes(input_path):
    assert_one_in_one_out(input_path, *GOOD)


@pytest.mark.parametrize("results, dead", [
    # a record dropped
    ([_result("a"), _result("b")], [_dead("a", "duplicate_id"), _dead(None, "malformed_json"), _dead(None, "x")]),
    # a record written twice, another wrongly dead-lettered as duplicate_id (totals still match)
    ([_result("a"), _result("b"), _result("b")], [_dead("c", "duplicate_id"), _dead(None, "malformed_json")]),
    # the repeated id answered twice instead of dead-lettered once
    ([_result("a"), _result("a"), _result("b"), _result("c")], [_dead(None, "malformed_json")]),
    # an id that is not in the input
    ([_result("a"), _result("b"), _result("zz")], [_dead("a", "duplicate_id"), _dead(None, "malformed_json")]),
], ids=["dropped", "twice-and-wrong-duplicate", "repeat-answered", "invented"])
def test_planted_defects_fail(input_path, results, dead):
    with pytest.raises(AssertionError):
        assert_one_in_one_out(input_path, results, dead)


def test_a_pack_mixing_two_customers_fails(input_path):
    assert_packs_never_mix(input_path, [_result("a", "p1", "k1"), _result("b", "p1", "k1"),
                                        _result("c", "p2", "k2")])
    with pytest.raises(AssertionError):
        # the rows may all say pack_key c1; the input says c and a belong to different customers
        assert_packs_never_mix(input_path, [_result("a", "p1", "k1"), _result("c", "p1", "k1")])
    with pytest.raises(AssertionError):
        assert_packs_never_mix(input_path, [_result("a", "p1", "k1"), _result("c", "p2", "k1")])
