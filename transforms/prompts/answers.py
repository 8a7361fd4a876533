"""Reading Claude's answers: parse, validate, match back by id, plan re-asks.

Pure functions (no Beam, no network). The rule throughout: an answer is
trusted only when it is complete (not cut at max_tokens), parses as strict
JSON, matches the schema and names exactly one record that was asked about.
Everything else is re-asked, never guessed: a packed answer object names its
item by the key `n` the prompt gave it (see packing.py), which maps back to
one record id; never by the object's position in the answer. An item
answered twice is not trusted even when the copies agree.

Checking an answer against the output schema (``output_validator``, the
compiled fast check) is ``validation.py``; its public names are re-exported here.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from transforms import fastjson
from transforms.prompts.packing import FREE_TEXT_FIELD, KEY_FIELD, RESULTS_FIELD, bisect
from transforms.prompts.validation import (MAX_MESSAGE_CHARS, _Checker, _checker, _item_checker, _preview,
                                          _schema_error, _shorten, compile_fast_check, output_validator)
from transforms.records import Reason

__all__ = [
    "DEFAULT_MAX_REASKS",
    "MAX_MESSAGE_CHARS",
    "Output",
    "PackOutcome",
    "SingleOutcome",
    "TRUNCATING_STOP_REASONS",
    "compile_fast_check",
    "output_validator",
    "parse_pack_answer",
    "parse_single_answer",
    "reask_plan",
]

#: A parsed answer: the object for a task with an output schema, else the text.
Output = Union[Dict[str, Any], str]

#: Stop reasons that mean the answer was cut off: never trusted, even if it parses.
TRUNCATING_STOP_REASONS = frozenset({"max_tokens", "model_context_window_exceeded"})
REFUSAL_STOP_REASON = "refusal"
#: Re-asks after the first request: halves, then singles; then the dead letter.
DEFAULT_MAX_REASKS = 2
#: A whole answer wrapped in a Markdown code fence, with or without a language.
_FENCED = re.compile(r"\A```[A-Za-z0-9_-]*[ \t]*\r?\n?(.*?)\s*```\Z", re.DOTALL)


# ---------------------------------------------------------------------------
# Outcomes


@dataclasses.dataclass(frozen=True)
class SingleOutcome:
    """The answer to a one-record request: an output, or why there is none."""

    output: Optional[Output] = None
    reason: Optional[Reason] = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is None

    @classmethod
    def success(cls, output: Output) -> "SingleOutcome":
        return cls(output=output)

    @classmethod
    def failure(cls, reason: Reason, message: str) -> "SingleOutcome":
        return cls(reason=reason, message=_shorten(message))


@dataclasses.dataclass(frozen=True)
class PackOutcome:
    """The answer to a pack, sorted by what can be trusted.

    Every expected id is in exactly one of: `valid`, `invalid`, `missing`,
    `duplicated`; or, when `error` is set (the answer as a whole is unusable:
    truncated, refused, not JSON, wrong shape), in none of them and failed
    with that error. Use `retry_ids` and `failures()` rather than the fields
    when the distinction does not matter.

    expected:     the ids asked about, in pack order.
    valid:        id -> output (the object without its key "n"; for a task
                  with no schema, the "output" string).
    invalid:      id -> (reason, message) for answers failing the schema.
    missing:      ids with no answer.
    duplicated:   ids answered more than once: not trusted, re-asked.
    invented:     keys answered but never given in the prompt (one entry per
                  answer object, as text): dropped, to be counted.
    unattributed: answer objects without an integer key: dropped, to be counted.
    truncated:    the answer stopped at max_tokens (then `error` is set too).
    error:        (reason, message) when nothing in the answer is trusted.
    """

    expected: Tuple[str, ...]
    valid: Mapping[str, Output] = dataclasses.field(default_factory=dict)
    invalid: Mapping[str, Tuple[Reason, str]] = dataclasses.field(default_factory=dict)
    missing: Tuple[str, ...] = ()
    duplicated: Tuple[str, ...] = ()
    invented: Tuple[str, ...] = ()
    unattributed: int = 0
    truncated: bool = False
    error: Optional[Tuple[Reason, str]] = None

    @classmethod
    def failed(cls, expected: Sequence[str], reason: Reason, message: str) -> "PackOutcome":
        """An answer of which nothing is trusted: every id fails with `reason`."""
        return cls(
            expected=tuple(expected),
            truncated=reason is Reason.MAX_TOKENS,
            error=(reason, _shorten(message)),
        )

    @property
    def retry_ids(self) -> Tuple[str, ...]:
        """Every expected id without a trusted answer, in pack order."""
        return tuple(i for i in self.expected if i not in self.valid)

    def failures(self) -> Dict[str, Tuple[Reason, str]]:
        """id -> (reason, message) for every failed id: the dead-letter rows."""
        if self.error is not None:
            return {i: self.error for i in self.expected}
        failed: Dict[str, Tuple[Reason, str]] = dict(self.invalid)
        for i in self.missing:
            failed[i] = (Reason.MISSING_IN_PACK, "no answer for this id in the pack")
        for i in self.duplicated:
            # No answer that can be trusted, as for a missing id.
            failed[i] = (Reason.DUPLICATED_IN_PACK, "answered more than once in the pack; not trusted")
        return {i: failed[i] for i in self.expected if i in failed}


class _Unusable(Exception):
    """The answer as a whole cannot be used."""

    def __init__(self, reason: Reason, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


# ---------------------------------------------------------------------------
# Parsing


def parse_single_answer(
    text: str, stop_reason: Optional[str], output_schema: Optional[Mapping[str, Any]]
) -> SingleOutcome:
    """Parse and validate the answer to a one-record request.

    With an output schema the answer must be one JSON object valid against it
    (a whole-answer ```json fence and surrounding whitespace are tolerated);
    without one the text is the output, verbatim, unless it is blank.
    """
    stop = _stop_failure(stop_reason)
    if stop is not None:
        return SingleOutcome.failure(*stop)
    text = text or ""
    if output_schema is None:
        if not text.strip():
            return SingleOutcome.failure(Reason.MISSING_RESULT, "the answer is empty")
        return SingleOutcome.success(text)
    try:
        answer = _load_json(text)
    except _Unusable as e:
        return SingleOutcome.failure(e.reason, e.message)
    message = _schema_error(_checker(output_schema), answer)
    if message is not None:
        return SingleOutcome.failure(Reason.SCHEMA_INVALID, message)
    return SingleOutcome.success(answer)


def parse_pack_answer(
    text: str,
    stop_reason: Optional[str],
    expected_ids: Sequence[str],
    output_schema: Optional[Mapping[str, Any]],
) -> PackOutcome:
    """Parse a packed answer and match it back to the records by key.

    `expected_ids` are the pack's record ids in the order it was rendered
    (packing.render_pack numbers them 1..n: the key each answer carries).
    Accepts `{"results": [...]}` and a bare array of answer objects. Each
    object is validated against packing.item_schema(output_schema). A
    truncated answer is not parsed at all: even a prefix that happens to
    parse may hold a cut-off last item, and halving the pack (the re-ask
    ladder) is what makes the answer fit. Raises ValueError if expected_ids
    is empty or repeats an id (a caller bug, not a model failure).
    """
    expected = _unique_ids(expected_ids)
    stop = _stop_failure(stop_reason)
    if stop is not None:
        return PackOutcome.failed(expected, *stop)
    try:
        objects = _answer_objects(_load_json(text or ""))
    except _Unusable as e:
        return PackOutcome.failed(expected, e.reason, e.message)

    answers, invented, unattributed = _group_by_key(objects, _key_lookup(expected))
    validator = _item_checker(output_schema)
    valid: Dict[str, Output] = {}
    invalid: Dict[str, Tuple[Reason, str]] = {}
    missing: List[str] = []
    duplicated: List[str] = []
    for record_id in expected:
        copies = answers.get(record_id, ())
        if not copies:
            missing.append(record_id)
        elif len(copies) > 1:
            duplicated.append(record_id)
        else:
            problem = _item_problem(validator, copies[0], output_schema)
            if problem is not None:
                invalid[record_id] = problem
            else:
                valid[record_id] = _item_output(copies[0], output_schema)
    return PackOutcome(
        expected=expected,
        valid=valid,
        invalid=invalid,
        missing=tuple(missing),
        duplicated=tuple(duplicated),
        invented=tuple(invented),
        unattributed=unattributed,
    )


def _stop_failure(stop_reason: Optional[str]) -> Optional[Tuple[Reason, str]]:
    """Why the stop reason alone makes the answer untrustworthy, if it does."""
    if stop_reason in TRUNCATING_STOP_REASONS:
        return Reason.MAX_TOKENS, f"the answer was cut off (stop_reason={stop_reason})"
    if stop_reason == REFUSAL_STOP_REASON:
        return Reason.REFUSAL, "the model declined to answer (stop_reason=refusal)"
    return None


def _load_json(text: str) -> Any:
    """Strict JSON of an answer: no NaN/Infinity, no repeated keys.

    A repeated key (two "id"s in one object) makes the object ambiguous, and
    json.loads would silently keep the last one.
    """
    body = text.strip()
    fenced = _FENCED.match(body)
    if fenced:
        body = fenced.group(1)
    # Compact JSON (the emulator's answers, most models'): orjson, checked by
    # writing it back; anything else is the standard library's to decide.
    quick = fastjson.loads_if_compact(body)
    if quick is not fastjson.NOT_COMPACT:
        return quick
    try:
        return json.loads(body, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as e:
        raise _Unusable(Reason.INVALID_JSON, f"the answer is not valid JSON: {e}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        keys = [key for key, _ in pairs]
        repeated = next(key for i, key in enumerate(keys) if key in keys[:i])
        raise ValueError(f"key {repeated!r} repeated in one object")
    return obj


def _answer_objects(answer: Any) -> List[Any]:
    """The list of per-item objects of a packed answer."""
    if isinstance(answer, list):
        return answer
    if isinstance(answer, dict) and isinstance(answer.get(RESULTS_FIELD), list):
        return answer[RESULTS_FIELD]
    raise _Unusable(
        Reason.SCHEMA_INVALID,
        f'a packed answer must be {{"{RESULTS_FIELD}": [...]}} or an array, got {_preview(answer)}')


def _unique_ids(ids: Sequence[str]) -> Tuple[str, ...]:
    expected = tuple(ids)
    if not expected:
        raise ValueError("a pack answer needs at least one expected id")
    if len(set(expected)) != len(expected):
        raise ValueError("expected ids repeat: answers could not be matched back")
    return expected


def _key_lookup(expected: Sequence[str]) -> Dict[int, str]:
    """Answer key -> record id: render_pack numbers the items 1..n in order."""
    return {n: record_id for n, record_id in enumerate(expected, start=1)}


def _answer_key(obj: Any) -> Optional[int]:
    """The integer key an answer object names, or None (booleans are no key,
    though Python counts them as ints; so is "3": the schema asks for 3)."""
    key = obj.get(KEY_FIELD) if isinstance(obj, dict) else None
    return key if isinstance(key, int) and not isinstance(key, bool) else None


def _group_by_key(
    objects: Sequence[Any], lookup: Mapping[int, str]
) -> Tuple[Dict[str, List[Dict[str, Any]]], List[str], int]:
    """Answer objects by the record id their key names; invented keys; unattributed count."""
    answers: Dict[str, List[Dict[str, Any]]] = {}
    invented: List[str] = []
    unattributed = 0
    for obj in objects:
        key = _answer_key(obj)
        if key is None:
            unattributed += 1
        elif key in lookup:
            answers.setdefault(lookup[key], []).append(obj)
        else:
            invented.append(str(key))
    return answers, invented, unattributed


def _item_problem(
    validator: "_Checker", obj: Dict[str, Any], output_schema: Optional[Mapping[str, Any]]
) -> Optional[Tuple[Reason, str]]:
    message = _schema_error(validator, obj)
    if message is not None:
        return Reason.SCHEMA_INVALID, message
    if output_schema is None and not obj[FREE_TEXT_FIELD].strip():
        # Same rule as a single free-text answer: blank is no answer.
        return Reason.MISSING_RESULT, "the answer is empty"
    return None


def _item_output(obj: Dict[str, Any], output_schema: Optional[Mapping[str, Any]]) -> Output:
    if output_schema is None:
        return obj[FREE_TEXT_FIELD]
    return {k: v for k, v in obj.items() if k != KEY_FIELD}


# ---------------------------------------------------------------------------
# The re-ask ladder


def reask_plan(
    failed_ids: Sequence[str], attempt: int, max_reasks: int = DEFAULT_MAX_REASKS
) -> Optional[List[List[str]]]:
    """How to ask again about the ids a request failed to answer.

    `attempt` numbers the re-ask being planned (1 = the first re-ask):
      1            -> two half-size packs (packing.bisect): isolates a record
                      that derails its pack and halves a truncated answer;
      2..max       -> one request per id: no neighbour can interfere;
      > max_reasks -> None: the ids go to the dead letter with the reasons
                      of their last outcome (PackOutcome.failures()).
    Nothing failed -> []. Only failed ids are ever re-asked: the valid answers
    of a pack are kept, never paid for twice.
    """
    if attempt < 1:
        raise ValueError(f"re-ask attempts are numbered from 1, got {attempt}")
    ids = list(failed_ids)
    if not ids:
        return []
    if attempt > max_reasks:
        return None
    if attempt == 1:
        return bisect(ids)
    return [[record_id] for record_id in ids]
