"""Prompt-injection screening: records whose text tries to steer the model.

At nightly scale nobody reads the 100,000 emails before they reach a prompt,
so a few of them will say "ignore the previous instructions", fake a SYSTEM
line, close the packed prompt's `</item>` tag or answer in the answer format
for another record. The packer already escapes record text (no record can
break out of its item); this screen makes such records *visible*:

    policy "off"         records pass untouched
    policy "flag"        (default) matching records pass, with `flags` set to
                         the names of the patterns they matched; results carry
                         them as `injection_flags`
    policy "quarantine"  matching records go to the dead letter
                         (stage "screen", error_type "injection") for a human

Pure functions, tested table by table in tests/test_screen.py:

    load_patterns(path=None) -> PatternSet     the maintained list by default
                                               (transforms/data/injection_patterns.yaml)
    scan(text, patterns) -> tuple[str, ...]    names of the matching patterns,
                                               in the file's order ("" -> ())
    normalize_for_scan(text) -> str            NFKC, invisible characters removed

and the Beam transform

    ScreenRecords(policy="flag", patterns_file=None, fields=None)
        PCollection[Record] -> {"records": PCollection[Record],
                                "dead_letter": PCollection[DeadLetter]}

Regexes are compiled once, when the patterns are loaded (on the launcher, so
a broken pattern file fails the job before any worker starts); compiled
patterns pickle by source, so workers recompile them once per DoFn instance.
Most texts match nothing, so `scan` first runs one combined regex over the
text and only runs the patterns one by one when it matched.
"""
from __future__ import annotations

import dataclasses
import os
import re
import unicodedata
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Tuple, Union

import apache_beam as beam
import yaml
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from transforms.normalize import raw_to_text
from transforms.records import DeadLetter, Reason, Record, Stage

__all__ = [
    "DEFAULT_PATTERNS_FILE",
    "POLICIES",
    "Pattern",
    "PatternError",
    "PatternSet",
    "ScreenRecords",
    "load_patterns",
    "normalize_for_scan",
    "scan",
    "scan_record",
    "screen_record",
]

DEFAULT_PATTERNS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                                     "injection_patterns.yaml")
POLICIES = ("off", "flag", "quarantine")
#: Every pattern is compiled with these flags (the YAML file's header explains them).
REGEX_FLAGS = re.IGNORECASE | re.MULTILINE | re.VERBOSE
_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*\Z")
DEAD = "dead_letter"

#: Characters that render as nothing and are removed before matching, so they
#: cannot split a keyword: soft hyphen, Mongolian vowel separator, zero-width
#: space / non-joiner / joiner, LRM/RLM, bidi embeddings and isolates, word
#: joiner and invisible operators, BOM.
_INVISIBLE = dict.fromkeys(
    [0x00AD, 0x180E, 0x200B, 0x200C, 0x200D, 0x200E, 0x200F, 0x202A, 0x202B, 0x202C, 0x202D,
     0x202E, 0x2060, 0x2061, 0x2062, 0x2063, 0x2064, 0x2066, 0x2067, 0x2068, 0x2069, 0xFEFF])


class PatternError(ValueError):
    """The pattern file is unusable; the message names the entry and why."""


@dataclasses.dataclass(frozen=True)
class Pattern:
    """One named regex of the maintained list."""

    name: str
    regex: str
    description: str = ""
    compiled: "re.Pattern[str]" = dataclasses.field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.compiled is None:
            object.__setattr__(self, "compiled", re.compile(self.regex, REGEX_FLAGS))


@dataclasses.dataclass(frozen=True)
class PatternSet:
    """The loaded patterns in file order, plus one combined regex as a prefilter."""

    patterns: Tuple[Pattern, ...]
    source: str = "<inline>"
    version: Any = None
    combined: "Optional[re.Pattern[str]]" = dataclasses.field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.combined is None and self.patterns:
            try:
                combined = re.compile("|".join(f"(?:{p.regex}\n)" for p in self.patterns), REGEX_FLAGS)
            except re.error:  # e.g. a pattern with a global inline flag: scan one by one
                combined = None
            object.__setattr__(self, "combined", combined)

    def __iter__(self) -> Iterator[Pattern]:
        return iter(self.patterns)

    def __len__(self) -> int:
        return len(self.patterns)

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(p.name for p in self.patterns)

    @classmethod
    def of(cls, patterns: Iterable[Union[Pattern, Tuple[str, str]]], source: str = "<inline>") -> "PatternSet":
        """From Patterns or (name, regex) pairs (tests, ad-hoc lists)."""
        items = tuple(p if isinstance(p, Pattern) else Pattern(name=p[0], regex=p[1]) for p in patterns)
        _check_unique(items, source)
        return cls(items, source=source)


def _check_unique(patterns: Sequence[Pattern], source: str) -> None:
    seen = set()
    for p in patterns:
        if p.name in seen:
            raise PatternError(f"{source}: pattern name {p.name!r} is used twice")
        seen.add(p.name)


def load_patterns(path: Optional[str] = None) -> PatternSet:
    """The patterns of `path` (local or any Beam filesystem), default the maintained list.

    Validates every entry (name kebab-case and unique, regex compiles, no
    regex that matches the empty string: it would flag every record) and
    raises PatternError naming the entry otherwise.
    """
    source = path or DEFAULT_PATTERNS_FILE
    try:
        if path and "://" in path:
            from apache_beam.io.filesystems import FileSystems
            with FileSystems.open(path) as f:
                raw = yaml.safe_load(f.read().decode("utf-8"))
        else:
            with open(source, encoding="utf-8") as f:
                raw = yaml.safe_load(f)
    except OSError as e:
        raise PatternError(f"cannot read injection patterns {source}: {e}") from e
    except yaml.YAMLError as e:
        raise PatternError(f"{source}: not valid YAML: {e}") from e
    if isinstance(raw, Mapping):
        version, entries = raw.get("version"), raw.get("patterns")
    else:
        version, entries = None, raw
    if not isinstance(entries, list) or not entries:
        raise PatternError(f"{source}: expected a non-empty list under 'patterns'")
    patterns = []
    for n, entry in enumerate(entries, start=1):
        where = f"{source}: pattern #{n}"
        if not isinstance(entry, Mapping):
            raise PatternError(f"{where}: expected a mapping with name, regex, description")
        unknown = set(entry) - {"name", "regex", "description"}
        if unknown:
            raise PatternError(f"{where}: unknown key(s) {sorted(unknown)}")
        name, regex = entry.get("name"), entry.get("regex")
        if not isinstance(name, str) or not _NAME.match(name):
            raise PatternError(f"{where}: 'name' must be kebab-case (a-z, 0-9, '-'), got {name!r}")
        where = f"{source}: pattern {name!r}"
        if not isinstance(regex, str) or not regex.strip():
            raise PatternError(f"{where}: 'regex' must be a non-empty string")
        description = entry.get("description") or ""
        if not isinstance(description, str):
            raise PatternError(f"{where}: 'description' must be a string")
        try:
            compiled = re.compile(regex, REGEX_FLAGS)
        except re.error as e:
            raise PatternError(f"{where}: invalid regex: {e}") from e
        if compiled.search("") is not None:
            raise PatternError(f"{where}: regex matches the empty string (it would flag every record)")
        patterns.append(Pattern(name=name, regex=regex, description=" ".join(description.split()),
                                compiled=compiled))
    _check_unique(patterns, source)
    return PatternSet(tuple(patterns), source=source, version=version)


def normalize_for_scan(text: str) -> str:
    """NFKC-normalized, invisible characters removed (ASCII text is returned as is)."""
    if text.isascii():
        return text
    return unicodedata.normalize("NFKC", text).translate(_INVISIBLE)


def scan(text: Optional[str], patterns: Union[PatternSet, Iterable[Pattern]]) -> Tuple[str, ...]:
    """Names of the patterns `text` matches, in pattern order; () for none."""
    if not text:
        return ()
    text = normalize_for_scan(text)
    if isinstance(patterns, PatternSet):
        if patterns.combined is not None and patterns.combined.search(text) is None:
            return ()
        patterns = patterns.patterns
    return tuple(p.name for p in patterns if p.compiled.search(text) is not None)


def scan_record(record: Record, patterns: Union[PatternSet, Iterable[Pattern]],
                fields: Optional[Sequence[str]] = None) -> Tuple[str, ...]:
    """Names matched by the record's text and by its string attributes.

    fields=None scans every string attribute too (any of them may be in the
    prompt template: a subject line can inject as well as a body); pass the
    template's fields to scan only those. Names keep the patterns' order.
    """
    if isinstance(patterns, PatternSet):
        order = patterns.names
    else:
        patterns = tuple(patterns)
        order = tuple(p.name for p in patterns)
    found = set(scan(record.text, patterns))
    keys = record.attrs.keys() if fields is None else fields
    for key in keys:
        value = record.attrs.get(key)
        if isinstance(value, str) and value:
            found.update(scan(value, patterns))
    return tuple(n for n in order if n in found)


def screen_record(record: Record, patterns: Union[PatternSet, Iterable[Pattern]], policy: str,
                  fields: Optional[Sequence[str]] = None) -> Union[Record, DeadLetter]:
    """Apply `policy` to one record: the record (maybe flagged) or its dead letter."""
    if policy not in POLICIES:
        raise ValueError(f"injection policy must be one of {POLICIES}, got {policy!r}")
    if policy == "off":
        return record
    names = scan_record(record, patterns, fields)
    if not names:
        return record
    if policy == "flag":
        merged = tuple(dict.fromkeys(tuple(record.flags) + names))
        return dataclasses.replace(record, flags=merged)
    return DeadLetter(
        record_id=record.record_id, pack_key=record.pack_key, stage=Stage.SCREEN.value,
        error_type=Reason.INJECTION.value,
        error_message=f"quarantined by the injection screen: matched {', '.join(names)}",
        raw=raw_to_text({"text": record.text, **record.attrs}))


class _Screen(beam.DoFn):
    def __init__(self, patterns: PatternSet, policy: str, fields: Optional[Sequence[str]]):
        self._patterns = patterns
        self._policy = policy
        self._fields = None if fields is None else tuple(fields)
        self._flagged = Metrics.counter("claude", "injection_flagged")
        self._quarantined = Metrics.counter("claude", "injection_quarantined")

    def process(self, record: Record) -> Iterator:
        out = screen_record(record, self._patterns, self._policy, self._fields)
        if isinstance(out, DeadLetter):
            self._quarantined.inc()
            yield TaggedOutput(DEAD, out)
            return
        if out is not record:
            self._flagged.inc()
        yield out


class ScreenRecords(beam.PTransform):
    """PCollection[Record] -> {"records": PCollection[Record], "dead_letter": PCollection[DeadLetter]}.

    policy: "off" | "flag" (default) | "quarantine" (see the module docstring).
    patterns_file: a YAML pattern list replacing the maintained one.
    fields: attributes to scan besides the text (None = every string attribute).
    The patterns are loaded and validated here, at graph construction.
    """

    def __init__(self, policy: str = "flag", patterns_file: Optional[str] = None,
                 fields: Optional[Sequence[str]] = None):
        super().__init__()
        if policy not in POLICIES:
            raise ValueError(f"--injection-policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self._policy = policy
        self._fields = None if fields is None else tuple(fields)
        self._patterns = None if policy == "off" else load_patterns(patterns_file)

    @property
    def patterns(self) -> Optional[PatternSet]:
        return self._patterns

    def expand(self, records):
        if self._policy == "off":
            nothing = records.pipeline | "No screen dead letters" >> beam.Create([])
            return {"records": records, "dead_letter": nothing}
        screened = records | "Screen for injection" >> beam.ParDo(
            _Screen(self._patterns, self._policy, self._fields)).with_outputs(DEAD, main="records")
        return {"records": screened.records, "dead_letter": screened[DEAD]}
