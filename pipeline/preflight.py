"""Checks of the input made before anything is sent (issue #18, "refuse before paying").

`check_input` reads the input with the job's own reader (the planner's row
loop, transforms/planning/sample.py) until the first valid record, and refuses
(ValueError, exit 2) when
  - the task's template names a field that record does not have, or
  - the input holds no valid record at all (every row a dead letter, or empty),
    as far as `limit` rows show.
"""
from __future__ import annotations

import collections
from typing import Any, Dict, Mapping, Optional, Tuple

from transforms.io.normalize import FieldMap
from transforms.records import DeadLetter, Reason, Record
from transforms.prompts.task import Task

#: Dead-letter reasons that mean "the record never became a valid request":
#: a run whose every row has one of them had nothing to ask.
INPUT_REASONS = frozenset(r.value for r in (
    Reason.UNREADABLE_FILE, Reason.MALFORMED_JSON, Reason.MALFORMED_CSV, Reason.NOT_AN_OBJECT,
    Reason.INVALID_UTF8, Reason.CONTROL_CHARACTERS, Reason.MISSING_ID, Reason.EMPTY_ID,
    Reason.INVALID_ID, Reason.MISSING_TEXT, Reason.EMPTY_TEXT, Reason.INVALID_TEXT,
    Reason.TEXT_TOO_LARGE, Reason.DUPLICATE_ID, Reason.TEMPLATE_ERROR, Reason.INJECTION))


#: When every row fails for one of these reasons, the flag naming the field is the likely mistake.
_FLAG_OF_REASON = {Reason.MISSING_ID.value: ("--id-field", "id_field"),
                   Reason.MISSING_TEXT.value: ("--text-field", "text_field")}


def no_valid_record_message(input_pattern: str, rows: int, dead: Mapping[str, int],
                            fields: Optional[FieldMap] = None) -> str:
    """'no valid record in INPUT: N rows, all dead letters: reason n, ...', and
    which flag to check when every row lacks the field a flag names."""
    if not rows:
        return f"no valid record in {input_pattern}: the input is empty (0 rows)"
    reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(dead.items(), key=lambda kv: (-kv[1], kv[0])))
    message = f"no valid record in {input_pattern}: {rows:,} rows, all dead letters: {reasons}"
    if fields is not None and len(dead) == 1:
        flag, attr = _FLAG_OF_REASON.get(next(iter(dead)), (None, None))
        if flag:
            message += f" (no row has the field {getattr(fields, attr)!r}: check {flag})"
    return message


def first_valid_record(pattern: str, fields: FieldMap, input_format: Optional[str],
                       limit: int) -> Tuple[Optional[Record], Optional[str], Dict[str, int], int, bool]:
    """(record, its file, dead letters before it by reason, rows read, whole input read)."""
    from transforms.io.read import detect_format
    from transforms.planning.sample import _files, _rows

    dead: collections.Counter = collections.Counter()
    rows = 0
    for path in _files(pattern):
        try:
            fmt = detect_format(path, input_format)
        except ValueError:
            dead[Reason.UNREADABLE_FILE.value] += 1
            continue
        try:
            for item in _rows(path, fmt, fields):
                rows += 1
                if isinstance(item, DeadLetter):
                    dead[item.error_type] += 1
                else:
                    return item, path, dict(dead), rows, False
                if rows >= limit:
                    return None, None, dict(dead), rows, False
        except Exception:  # noqa: BLE001 - the job makes an unreadable file one dead letter too
            dead[Reason.UNREADABLE_FILE.value] += 1
    return None, None, dict(dead), rows, True


def load_and_check(opts: Any) -> None:
    """Load the task as the job will (flags applied) and check_input with it."""
    from transforms.prompts.task import load_task
    task = load_task(opts.task).with_overrides(text_field=opts.text_field, id_field=opts.id_field)
    check_input(opts, task, limit=opts.plan_sample)


def check_input(opts: Any, task: Task, limit: int) -> None:
    """Raise ValueError (exit 2) when the first valid record shows the job cannot
    work: a template field it lacks, or no valid record in the whole input."""
    fields = FieldMap(id_field=opts.id_field, text_field=opts.text_field,
                      pack_key_field=opts.pack_key_field, max_text_bytes=opts.max_text_bytes)
    record, path, dead, rows, complete = first_valid_record(opts.input, fields, opts.input_format, limit)
    if record is None:
        if complete:
            raise ValueError(no_valid_record_message(opts.input, rows, dead, fields))
        return  # the first `limit` rows are all dead letters; the plan or the run will tell
    available = task.fields_of(record)
    missing = [f for f in task.template_fields() if f not in available]
    if missing:
        names = ", ".join(f"{{{m}}}" for m in missing)
        raise ValueError(
            f"{opts.task}: the template names field(s) {names} that the input does not have: the first "
            f"valid record (id {record.record_id!r} in {path}) has {', '.join(sorted(available))}"
            f" (--text-field {opts.text_field}, --id-field {opts.id_field})")
