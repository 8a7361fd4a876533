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
a broken pattern file fails the job before any worker starts; compiled
patterns pickle by source, so each worker recompiles them once). Python's re
is slow on case-insensitive alternations (about 30 s for 100,000 emails with
this list), so every pattern also carries literal anchors derived from its
parse tree (`derive_anchors`) and one trie-shaped regex over the rarest of
them gates the whole scan: an ordinary email costs one gate search, and a
regex only runs on a text that holds its anchors (about 2 s per 100,000
emails on one slow core).

The pattern list (``load_patterns``, ``Pattern``, ``PatternSet``,
``PatternError``) lives in ``patterns.py`` and the anchors and the word gate
(``text_key``, ``derive_anchors``, ``WordGate``) in ``gate.py``; their names
are re-exported here. This module is the scanning and the Beam transform.
"""
from __future__ import annotations

import dataclasses
import re
import unicodedata
from typing import Iterable, Iterator, Optional, Sequence, Tuple, Union

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from transforms.io.normalize import raw_to_text
from transforms.records import DeadLetter, Reason, Record, Stage
from transforms.screen.gate import REGEX_FLAGS, WordGate, derive_anchors, text_key
from transforms.screen.patterns import DEFAULT_PATTERNS_FILE, Pattern, PatternError, PatternSet, load_patterns

__all__ = [
    "DEFAULT_PATTERNS_FILE",
    "POLICIES",
    "Pattern",
    "PatternError",
    "PatternSet",
    "ScreenRecords",
    "load_patterns",
    "normalize_for_scan",
    "derive_anchors",
    "scan",
    "scan_record",
    "screen_record",
    "text_key",
    "REGEX_FLAGS",
    "WordGate",
]

POLICIES = ("off", "flag", "quarantine")
DEAD = "dead_letter"

#: Characters that render as nothing and are removed before matching, so they
#: cannot split a keyword: soft hyphen, Mongolian vowel separator, zero-width
#: space / non-joiner / joiner, LRM/RLM, bidi embeddings and isolates, word
#: joiner and invisible operators, BOM.
_LINE_BREAKS = re.compile("[\u2028\u2029\x85]")
_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")


def normalize_for_scan(text: str) -> str:
    """NFKC-normalized, invisible characters removed, every line break a "\\n"."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text.isascii():
        return text
    if not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    if _INVISIBLE.search(text) is not None:
        text = _INVISIBLE.sub("", text)
    if _LINE_BREAKS.search(text) is not None:
        text = _LINE_BREAKS.sub("\n", text)
    return text


def scan(text: Optional[str], patterns: Union[PatternSet, Iterable[Pattern]]) -> Tuple[str, ...]:
    """Names of the patterns `text` matches, in pattern order; () for none."""
    if not text:
        return ()
    text = normalize_for_scan(text)
    key = text_key(text)
    if isinstance(patterns, PatternSet) and patterns.gate is not None and patterns.gate.search(key) is None:
        return ()
    return tuple(p.name for p in patterns if p.search(text, key))


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
    keys = record.attrs.keys() if fields is None else fields
    values = [value for value in map(record.attrs.get, keys) if isinstance(value, str) and value]
    if isinstance(patterns, PatternSet) and patterns.gate is not None:
        # One gate search over one key per record instead of one per text: the
        # gate finds literal words (WordGate) that hold no line break, and
        # the key of the texts joined by "\n" contains each text's own key
        # (normalization is per character, "\n" composes with nothing and
        # becomes a space like the whitespace around it), so nothing a per-text
        # gate finds is missed; a word across two texts only costs a full scan.
        # Measured: 45 -> ~20 us per sample email, most of it fewer calls.
        if patterns.gate.search(text_key(normalize_for_scan("\n".join((record.text, *values))))) is None:
            return ()
    found = set(scan(record.text, patterns))
    for value in values:
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
