"""Reading Claude's answers: parse, validate, match back by id, plan re-asks.

Pure functions (no Beam, no network). The rule throughout: an answer is
trusted only when it is complete (not cut at max_tokens), parses as strict
JSON, matches the schema and names exactly one record that was asked about.
Everything else is re-asked, never guessed: a packed answer object names its
item by the key `n` the prompt gave it (see packing.py), which maps back to
one record id; never by the object's position in the answer. An item
answered twice is not trusted even when the copies agree.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import operator
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

from transforms import fastjson
from transforms.prompts.packing import FREE_TEXT_FIELD, KEY_FIELD, RESULTS_FIELD, bisect, item_schema
from transforms.records import Reason

__all__ = [
    "DEFAULT_MAX_REASKS",
    "MAX_MESSAGE_CHARS",
    "Output",
    "PackOutcome",
    "SingleOutcome",
    "TRUNCATING_STOP_REASONS",
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
#: Error messages go to the dead letter and logs; a jsonschema message quotes
#: the offending value, which can be the whole answer.
MAX_MESSAGE_CHARS = 299
#: Re-asks after the first request: halves, then singles; then the dead letter.
DEFAULT_MAX_REASKS = 2
#: Distinct schemas compiled per process: one per task, a few more in tests.
_VALIDATOR_CACHE_SIZE = 32
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
# Schema validation


def output_validator(schema: Mapping[str, Any]) -> Validator:
    """A compiled validator for `schema`, cached per distinct schema.

    Compiling is far dearer than validating, and this runs per record. The
    schema's own `$schema` picks the draft; Draft 2020-12 otherwise. Formats
    are annotations only (the 2020-12 default). Validators are stateless, so
    one may be shared by all threads. Raises jsonschema.SchemaError for an
    invalid schema: call it once at pipeline construction to fail early.
    """
    return _compile(json.dumps(schema, sort_keys=True, separators=(",", ":")))


@functools.lru_cache(maxsize=_VALIDATOR_CACHE_SIZE)
def _compile(canonical_schema: str) -> Validator:
    schema = json.loads(canonical_schema)
    cls = validator_for(schema, default=Draft202012Validator)
    cls.check_schema(schema)
    return cls(schema)


def _schema_error(checker: "_Checker", instance: Any) -> Optional[str]:
    """The most relevant validation error, located and shortened; None if valid.

    The compiled fast check answers for valid instances (nearly all of them);
    jsonschema decides, and words the error, for everything else.
    """
    if checker.fast is not None and checker.fast(instance):
        return None
    error = best_match(checker.validator.iter_errors(instance))
    if error is None:
        return None
    return _shorten(f"{error.json_path}: {error.message}")


@dataclasses.dataclass(frozen=True)
class _Checker:
    """jsonschema's validator, and a compiled predicate for the common subset (or None)."""

    validator: Validator
    fast: Optional[Callable[[Any], bool]]


#: schema object -> checker, by identity: a task's schema is one object for
#: the whole run, and the canonical JSON of the lru_cache key costs more than
#: validating an answer. The schema is kept referenced so its id stays its own.
_BY_IDENTITY: Dict[int, Tuple[Any, "_Checker"]] = {}
_ITEM_BY_IDENTITY: Dict[int, Tuple[Any, "_Checker"]] = {}


def _checker(schema: Mapping[str, Any]) -> "_Checker":
    hit = _BY_IDENTITY.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    canonical = json.dumps(schema, sort_keys=True, separators=(",", ":"))
    checker = _compile_checker(canonical)
    if len(_BY_IDENTITY) >= _VALIDATOR_CACHE_SIZE:
        _BY_IDENTITY.clear()
    _BY_IDENTITY[id(schema)] = (schema, checker)
    return checker


def _item_checker(task_schema: Optional[Mapping[str, Any]]) -> "_Checker":
    """The checker of one answer object in a pack (packing.item_schema, built once)."""
    hit = _ITEM_BY_IDENTITY.get(id(task_schema))
    if hit is not None and hit[0] is task_schema:
        return hit[1]
    checker = _checker(item_schema(task_schema))
    if len(_ITEM_BY_IDENTITY) >= _VALIDATOR_CACHE_SIZE:
        _ITEM_BY_IDENTITY.clear()
    _ITEM_BY_IDENTITY[id(task_schema)] = (task_schema, checker)
    return checker


@functools.lru_cache(maxsize=_VALIDATOR_CACHE_SIZE)
def _compile_checker(canonical_schema: str) -> "_Checker":
    return _Checker(_compile(canonical_schema), compile_fast_check(json.loads(canonical_schema)))


# ---------------------------------------------------------------------------
# The fast check: a plain-Python predicate for the keywords answer schemas use
#
# jsonschema walks the schema for every instance (~45 us for a three-field
# object); these closures cost a few microseconds. The contract is one-way:
# True means jsonschema would accept the instance too; False means "ask
# jsonschema" (which then decides, and words the error). A schema using any
# keyword outside the subset gets no fast check at all.
#
# Why by hand and not fastjsonschema: it implements drafts 4 to 7, and answers
# are validated by draft 2020-12 (jsonschema's Draft202012Validator), where
# `items` arrays, `$ref` siblings, `exclusiveMinimum` and the 2020-12-only
# keywords (prefixItems, unevaluated*, dependent*) mean something else or are
# unknown to it. Its "valid" would then not imply jsonschema's. This subset is
# where the drafts agree, and the one-way contract is property-tested
# (tests/test_answers.py).

#: Keywords that never affect validity (formats are annotations in 2020-12,
#: and our validators are built without a format checker).
_ANNOTATION_KEYWORDS = frozenset({
    "description", "title", "examples", "default", "$comment", "format", "deprecated",
    "readOnly", "writeOnly", "contentMediaType", "contentEncoding"})
_DRAFT_2020_12 = frozenset({"https://json-schema.org/draft/2020-12/schema",
                            "https://json-schema.org/draft/2020-12/schema#"})
_TYPE_TESTS: Dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    # 1.0 is an integer for JSON Schema draft 4 and later.
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)
                          or isinstance(v, float) and v.is_integer()),
}


class _Unsupported(Exception):
    """The schema uses something the fast check does not cover."""


def compile_fast_check(schema: Any) -> Optional[Callable[[Any], bool]]:
    """A predicate equal to "jsonschema says valid" where it says True, or None
    when the schema uses a keyword outside the subset (type, enum of strings,
    properties, required, additionalProperties, items, min/max, min/maxLength,
    min/maxItems, annotations)."""
    if isinstance(schema, Mapping) and "$schema" in schema:
        if schema["$schema"] not in _DRAFT_2020_12:
            return None
        schema = {k: v for k, v in schema.items() if k != "$schema"}
    try:
        return _fast(schema)
    except _Unsupported:
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: Keyword -> the type its check tests first ("applies only to numbers", ...).
#: Under a schema whose single `type` implies that one, the test is left out:
#: the type test runs first and has made it.
_GUARDED_BY = {
    "minimum": "number", "maximum": "number", "exclusiveMinimum": "number", "exclusiveMaximum": "number",
    "minLength": "string", "maxLength": "string", "minItems": "array", "maxItems": "array",
    "items": "array", "required": "object", "properties": "object", "additionalProperties": "object"}
#: A `type` -> the guard its test implies (an integer is a number).
_IMPLIED_GUARD = {"number": "number", "integer": "number", "string": "string", "array": "array",
                  "object": "object"}
#: A numeric bound -> partial(op, bound)(v), i.e. `bound op v`: one C call, no Python frame.
_BOUND_OPS = {"minimum": operator.le, "maximum": operator.ge,
              "exclusiveMinimum": operator.lt, "exclusiveMaximum": operator.gt}


def _always(value: Any) -> bool:
    return True


def _fast(schema: Any) -> Callable[[Any], bool]:
    if schema is True or schema == {}:
        return _always
    if not isinstance(schema, Mapping):
        raise _Unsupported(schema)
    kind = schema.get("type")
    known = _IMPLIED_GUARD.get(kind) if isinstance(kind, str) else None
    checks: List[Callable[[Any], bool]] = []
    for key, arg in schema.items():
        if key in _ANNOTATION_KEYWORDS or key in ("type", "properties", "additionalProperties"):
            continue  # the type test goes first and objects are compiled together, below
        checks.append(_keyword(key, arg, guarded=_GUARDED_BY.get(key) != known))
    if "properties" in schema or "additionalProperties" in schema:
        checks.append(_object_check(schema.get("properties", {}), schema.get("additionalProperties", True),
                                    guarded=known != "object"))
    if "type" in schema:
        checks.insert(0, _keyword("type", kind, guarded=True))  # first: the unguarded checks rely on it
    return _all_of(tuple(checks)) if checks else _always


def _all_of(checks: Tuple[Callable[[Any], bool], ...]) -> Callable[[Any], bool]:
    """all(check(v) for check in checks), in order, unrolled for the usual one
    to three checks: no loop or generator per call (this runs once per answer
    and per nested value)."""
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks
        return lambda v: first(v) and second(v)
    if len(checks) == 3:
        first, second, third = checks
        return lambda v: first(v) and second(v) and third(v)

    def check_all(v: Any) -> bool:
        for check in checks:
            if not check(v):
                return False
        return True
    return check_all


def _unless(applies: Callable[[Any], bool], check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """`check`, for the values it applies to; any other value passes (a keyword
    such as maxLength says nothing about a number)."""
    return lambda v: not applies(v) or check(v)


def _keyword(key: str, arg: Any, *, guarded: bool) -> Callable[[Any], bool]:
    """The check of one keyword; with guarded=False, for values known to be of its type."""
    if key == "type":
        names = [arg] if isinstance(arg, str) else arg
        if not isinstance(names, list) or not names or any(n not in _TYPE_TESTS for n in names):
            raise _Unsupported(key)
        tests = tuple(_TYPE_TESTS[n] for n in names)
        if len(tests) == 1:
            return tests[0]
        return lambda v: any(t(v) for t in tests)
    if key == "enum":
        # Strings only: equality of numbers and booleans has JSON-specific rules.
        if not isinstance(arg, list) or not arg or not all(isinstance(x, str) for x in arg):
            raise _Unsupported(key)
        allowed = frozenset(arg)
        return lambda v: isinstance(v, str) and v in allowed
    if key == "required":
        if not isinstance(arg, list) or not all(isinstance(x, str) for x in arg):
            raise _Unsupported(key)
        names = frozenset(arg)
        has_all = lambda v: v.keys() >= names  # noqa: E731 - a set comparison in C, no generator
        return _unless(_TYPE_TESTS["object"], has_all) if guarded else has_all
    if key in _BOUND_OPS:
        if not _is_number(arg):
            raise _Unsupported(key)
        within = functools.partial(_BOUND_OPS[key], arg)
        return _unless(_is_number, within) if guarded else within
    if key in ("minLength", "maxLength", "minItems", "maxItems"):
        if not isinstance(arg, int) or isinstance(arg, bool) or arg < 0:
            raise _Unsupported(key)
        if key.startswith("min"):
            fits = lambda v: len(v) >= arg  # noqa: E731
        else:
            fits = lambda v: len(v) <= arg  # noqa: E731
        return _unless(_TYPE_TESTS["string" if key.endswith("Length") else "array"], fits) if guarded else fits
    if key == "items":
        if not isinstance(arg, Mapping) and arg is not True:
            raise _Unsupported(key)  # a list is prefixItems' old spelling
        each = _fast(arg)

        def each_item(v: Any) -> bool:
            for x in v:
                if not each(x):
                    return False
            return True
        return _unless(_TYPE_TESTS["array"], each_item) if guarded else each_item
    raise _Unsupported(key)


def _object_check(properties: Any, additional: Any, *, guarded: bool) -> Callable[[Any], bool]:
    if not isinstance(properties, Mapping):
        raise _Unsupported("properties")
    subs = {name: _fast(sub) for name, sub in properties.items()}
    if additional is True:
        rest = None
    elif additional is False:
        rest = False
    elif isinstance(additional, Mapping):
        rest = _fast(additional)
    else:
        raise _Unsupported("additionalProperties")

    def check(value: Any) -> bool:
        for name, item in value.items():
            sub = subs.get(name)
            if sub is not None:
                if not sub(item):
                    return False
            elif rest is False or (rest is not None and not rest(item)):
                return False
        return True
    return _unless(_TYPE_TESTS["object"], check) if guarded else check


def _shorten(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """At most `limit` characters, cut in the middle.

    The middle is the quoted value; the start says where, the end says what
    was expected ("... is not one of ['pos', 'neg']").
    """
    if len(message) <= limit:
        return message
    head = (limit - 1) // 2
    return f"{message[:head]}…{message[len(message) - (limit - 1 - head):]}"


def _preview(value: Any, limit: int = 60) -> str:
    """A short JSON rendering of a value, for messages."""
    return _shorten(json.dumps(value, ensure_ascii=False), limit)


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
