"""The run summary: counts, reasons, tokens and cost, read back from the Parquet
output (streamed column by column, never the whole dataset)."""
from __future__ import annotations

import collections
import json
from typing import Any, Dict, List, Mapping, Optional

from apache_beam.io.filesystems import FileSystems

from pipeline.profile import AnswerProfile
from transforms.modes import MESSAGES_MODES

#: Beam counters shown in the summary: (label, counter name).
_API_COUNTERS = (("requests", "requests"), ("429s", "responses_429"), ("529s", "responses_529"),
                 ("retries", "retries"), ("throttled_s", "throttled_ms"),
                 ("reasked_records", "reasked_records"), ("invented_ids", "invented_ids"),
                 ("split_packs", "split_packs"))

_SUM_COLUMNS = ("input_tokens", "output_tokens", "cache_creation_input_tokens",
                "cache_read_input_tokens", "cost_usd")


def _files(directory: str):
    match = FileSystems.match([f"{directory}/*.parquet"])[0]
    return sorted(m.path for m in match.metadata_list)


def _iter_batches(directory: str, columns):
    import pyarrow.parquet as pq
    for path in _files(directory):
        with FileSystems.open(path) as f:
            for batch in pq.ParquetFile(f).iter_batches(columns=list(columns)):
                yield batch


def summarize(output: str, run_id: str, mode: str, metrics: Mapping[str, int],
              wall_s: float, output_schema: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    totals = collections.Counter()
    results = 0
    ids = collections.Counter()
    profile = AnswerProfile(output_schema)
    for batch in _iter_batches(f"{output}/results",
                               ("record_id", "output_json", "injection_flags") + _SUM_COLUMNS):
        results += batch.num_rows
        cols = batch.to_pydict()
        ids.update(cols["record_id"])
        for col in _SUM_COLUMNS:
            totals[col] += sum(v or 0 for v in cols[col])
        for answer, flags in zip(cols["output_json"], cols["injection_flags"]):
            if answer is not None:
                profile.add_output(answer)
            profile.add_flags(flags)
    reasons = collections.Counter()
    dead = 0
    for batch in _iter_batches(f"{output}/dead_letter",
                               ("record_id", "error_type", "error_message") + _SUM_COLUMNS):
        dead += batch.num_rows
        cols = batch.to_pydict()
        for col in _SUM_COLUMNS:  # a dead letter may have consumed tokens before it failed
            totals[col] += sum(v or 0 for v in cols[col])
        reasons.update(cols["error_type"])
        for record_id, reason, message in zip(cols["record_id"], cols["error_type"], cols["error_message"]):
            profile.add_dead(record_id, reason, message)
        # A duplicate's row repeats the id of the record that won, by design.
        ids.update(i for i, why in zip(cols["record_id"], cols["error_type"])
                   if i is not None and why != "duplicate_id")
    repeated = sum(1 for n in ids.values() if n > 1)
    rows_read = metrics.get("records_read", 0)
    unreadable = reasons.get("unreadable_file", 0)
    return {
        "run_id": run_id,
        "mode": mode,
        "records_in": rows_read,
        "results": results,
        "dead_letters": dead,
        "dead_letters_by_reason": dict(sorted(reasons.items())),
        # One record in, exactly one row out (an unreadable file is one row for all of it).
        "one_in_one_out": results + dead == rows_read + unreadable and repeated == 0,
        "ids_with_more_than_one_row": repeated,
        "input_tokens": int(totals["input_tokens"]),
        "output_tokens": int(totals["output_tokens"]),
        "cache_creation_input_tokens": int(totals["cache_creation_input_tokens"]),
        "cache_read_input_tokens": int(totals["cache_read_input_tokens"]),
        "cost_usd": round(totals["cost_usd"], 6),
        "batches_created": metrics.get("batches_created", 0),
        "batches_reused": metrics.get("batches_reused", 0),
        # Records load shedding took off the Messages route (--shed-to): to the
        # batch route, or to the dead letter as `shed`.
        "shed_records": metrics.get("shed_records", 0),
        "api": {name: metrics.get(key, 0) for name, key in _API_COUNTERS},
        "metrics": dict(sorted(metrics.items())),
        "wall_time_s": round(wall_s, 2),
        "output": output,
        "answers": profile.to_dict(),
    }


def render(summary: Mapping[str, Any]) -> str:
    """A table for a person."""
    lines = [f"run {summary['run_id']} ({summary['mode']})",
             f"  records in      {summary['records_in']:>10,}",
             f"  results         {summary['results']:>10,}",
             f"  dead letters    {summary['dead_letters']:>10,}"]
    for reason, n in summary["dead_letters_by_reason"].items():
        lines.append(f"    {reason:<22}{n:>8,}")
    pending = summary.get("batches_pending", 0)
    if pending:  # rows of running batches are not written yet: not a broken promise
        verdict = f"not yet: {pending} batch(es) still running"
    else:
        verdict = "yes" if summary["one_in_one_out"] else "NO - see summary.json"
    lines += [f"  one in, one out {verdict}",
              f"  input tokens    {summary['input_tokens']:>10,}",
              f"  cache write/read {summary['cache_creation_input_tokens']:>9,} / {summary['cache_read_input_tokens']:,}",
              f"  output tokens   {summary['output_tokens']:>10,}",
              f"  cost            ${summary['cost_usd']:>10.4f}",
              _savings_line(summary),
              f"  batches         {summary['batches_created']:>10,}"
              + (f"  (+{summary['batches_reused']} reused from the ledger)" if summary.get("batches_reused") else ""),
              *_shed_lines(summary),
              "  API             " + (", ".join(
                  f"{k} {v / 1000 if k == 'throttled_s' else v:,.0f}" for k, v in summary.get("api", {}).items()
                  if v) or "-"),
              *_answer_lines(summary),
              f"  wall time       {summary['wall_time_s']:>9.1f}s",
              f"  output          {summary['output']}/results, {summary['output']}/dead_letter"]
    return "\n".join(lines)


def _answer_lines(summary: Mapping[str, Any]) -> List[str]:
    """Injection flags, what the answers say, and a dead letter or two per reason."""
    answers = summary.get("answers") or {}
    lines = []
    injection = answers.get("injection") or {}
    if injection.get("flagged_records"):
        top = ", ".join(f"{k} {v:,}" for k, v in list(injection["by_pattern"].items())[:4])
        lines.append(f"  injection flags {injection['flagged_records']:>10,} records  ({top})")
    for name, values in (answers.get("values") or {}).items():
        shown = ", ".join(f"{v} {n:,}" for v, n in list(values.items())[:6])
        lines.append(f"  answers.{name:<8} {shown}")
    for name, s in (answers.get("numbers") or {}).items():
        lines.append(f"  answers.{name:<8} mean {s['mean']:,.2f}, min {s['min']:,.2f}, max {s['max']:,.2f} "
                     f"({s['count']:,})")
    for reason, examples in (answers.get("dead_letter_examples") or {}).items():
        first = examples[0]
        lines.append(f"  e.g. {reason:<18} {first.get('record_id') or '(no id)'}: {first['error_message'][:70]}")
    return lines


def _shed_lines(summary: Mapping[str, Any]):
    """The load-shedding line: on every Messages-route run, and on any run that shed."""
    shed = summary.get("shed_records", 0)
    if not shed and summary.get("mode") not in MESSAGES_MODES:
        return []
    line = f"  shed records    {shed:>10,}"
    if shed:
        dead = summary.get("dead_letters_by_reason", {}).get("shed", 0)
        line += f"  ({dead:,} to the dead letter, {shed - dead:,} to the batch API)"
    return [line]


def _savings_line(summary: Mapping[str, Any]) -> str:
    from pipeline.report import savings_vs_sync
    saved, fraction, what = savings_vs_sync(summary)
    if saved is None:
        return "  saved           -"
    return f"  saved           ${saved:>10.4f}  ({fraction:.0%} {what})"


def write(summary: Mapping[str, Any], output: str) -> str:
    path = f"{output}/summary.json"
    with FileSystems.create(path) as f:
        f.write(json.dumps(summary, indent=2, sort_keys=True).encode("utf-8"))
    return path
