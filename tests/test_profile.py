"""What the answers say (pipeline/profile.py), against hand-computed cases,
and how the summary and the report show it."""
from __future__ import annotations

import json

from pipeline import report as R
from pipeline import summary as S
from pipeline.profile import MAX_VALUES, AnswerProfile

SCHEMA = {"type": "object", "properties": {
    "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
    "score": {"type": "number", "minimum": -1, "maximum": 1},
    "urgent": {"type": "boolean"},
    "reason": {"type": "string"}}}


def _profile(answers):
    p = AnswerProfile(SCHEMA)
    for a in answers:
        p.add_output(json.dumps(a))
    return p.to_dict()


def test_counts_values_and_bins_numbers_by_the_schemas_bounds():
    d = _profile([{"sentiment": "positive", "score": 0.95, "urgent": False, "reason": "ok"},
                  {"sentiment": "negative", "score": -1.0, "urgent": True, "reason": "bad"},
                  {"sentiment": "negative", "score": 1.0, "urgent": True, "reason": "bad"}])
    assert d["values"]["sentiment"] == {"negative": 2, "positive": 1}
    assert d["values"]["urgent"] == {"true": 2, "false": 1}
    s = d["numbers"]["score"]
    assert (s["count"], s["min"], s["max"]) == (3, -1.0, 1.0) and abs(s["mean"] - 0.95 / 3) < 1e-9
    # by hand: bins of width 0.2 over [-1, 1]; -1.0 -> bin 0; 0.95 and 1.0 (the top edge) -> bin 9
    assert s["histogram"]["counts"] == [1, 0, 0, 0, 0, 0, 0, 0, 0, 2]


def test_free_text_stops_being_counted():
    d = _profile([{"reason": f"reason number {i}"} for i in range(MAX_VALUES + 5)])
    assert "reason" not in d["values"] and d["free_text_fields"] == ["reason"]


def test_flags_and_dead_letter_examples_are_bounded():
    p = AnswerProfile(None)
    p.add_flags(["ignore_instructions"])
    p.add_flags([])
    p.add_flags(["ignore_instructions", "fake_item_tag"])
    for i in range(10):
        p.add_dead(f"r{i}", "empty_text", "field 'text' is empty")
    d = p.to_dict()
    assert d["injection"] == {"flagged_records": 2, "by_pattern": {"ignore_instructions": 2, "fake_item_tag": 1}}
    assert [e["record_id"] for e in d["dead_letter_examples"]["empty_text"]] == ["r0", "r1", "r2"]


def test_the_report_and_the_printed_summary_show_the_answers():
    answers = _profile([{"sentiment": "negative", "score": -0.5}, {"sentiment": "positive", "score": 0.5}])
    answers["injection"] = {"flagged_records": 1, "by_pattern": {"ignore_instructions": 1}}
    answers["dead_letter_examples"] = {"empty_text": [{"record_id": "em-7", "error_message": "field 'text' is empty"}]}
    summary = {"run_id": "r", "mode": "batch", "records_in": 3, "results": 2, "dead_letters": 1,
               "dead_letters_by_reason": {"empty_text": 1}, "one_in_one_out": True, "input_tokens": 1,
               "output_tokens": 1, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
               "cost_usd": 0.01, "batches_created": 1, "batches_reused": 0, "wall_time_s": 1.0,
               "output": "/tmp/o", "answers": answers, "model": "claude-haiku-4-5",
               "task": "samples/sentiment.yaml", "input": "in.jsonl"}
    page = R.render_report(summary, [])
    for text in ('id="chart-answer-sentiment"', 'id="chart-answer-score"', 'id="chart-injection"',
                 "em-7", "field &#x27;text&#x27; is empty", "claude-haiku-4-5", "samples/sentiment.yaml"):
        assert text in page, text
    printed = S.render(summary)
    assert "answers.sentiment" in printed and "negative 1" in printed
    assert "injection flags" in printed and "e.g. empty_text" in printed
