"""Validating an answer against the task's output schema, fast.

:func:`output_validator` compiles a jsonschema validator once per distinct
schema (Draft 2020-12 unless the schema says otherwise), and
:func:`compile_fast_check` compiles the common subset of JSON Schema that
answer schemas use into a plain-Python predicate whose True implies
jsonschema's; jsonschema decides, and words the error, for everything else.
The checkers are cached by schema identity for the per-answer path, and error
messages are shortened for the dead letter (``_shorten``, ``_preview``). Pure:
no Beam, no network; parsing and matching answers is ``answers.py``.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import operator
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

from transforms.prompts.packing import item_schema

__all__ = ["MAX_MESSAGE_CHARS", "compile_fast_check", "output_validator"]

#: Error messages go to the dead letter and logs; a jsonschema message quotes
#: the offending value, which can be the whole answer.
MAX_MESSAGE_CHARS = 299
#: Distinct schemas compiled per process: one per task, a few more in tests.
_VALIDATOR_CACHE_SIZE = 32


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
