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
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
import unicodedata
from typing import Any, FrozenSet, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import ahocorasick
import apache_beam as beam
import yaml
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from transforms.io.normalize import raw_to_text
from transforms.records import DeadLetter, Reason, Record, Stage

try:  # the regex parser: re._parser since Python 3.11, sre_parse before
    from re import _constants as _sre_c
    from re import _parser as _sre_parse
except ImportError:  # pragma: no cover - Python < 3.11
    import sre_constants as _sre_c
    import sre_parse as _sre_parse

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
]

DEFAULT_PATTERNS_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
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
_LINE_BREAKS = re.compile("[\u2028\u2029\x85]")
_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")



def _case_canon() -> dict:
    """Lower-case characters re's IGNORECASE treats as equal to another one
    (dotless ı and i, long ſ and s, µ and μ, ...), mapped to one of them; and
    U+0130 (İ), whose lower case is two characters, to a plain i."""
    try:
        from re._casefix import _EXTRA_CASES
    except ImportError:  # pragma: no cover - Python < 3.11
        _EXTRA_CASES = {0x69: (0x131,), 0x73: (0x17F,)}
        _EXTRA_CASES.update({v[0]: (k,) for k, v in list(_EXTRA_CASES.items())})
    table = {code: chr(min((code,) + tuple(others))) for code, others in _EXTRA_CASES.items()
             if min((code,) + tuple(others)) != code}
    table[0x0130] = "i"
    return table


#: For the anchor key only (see text_key).
_CASE_CANON = _case_canon()
_CASE_ODD = re.compile("[" + "".join(re.escape(chr(c)) for c in sorted(_CASE_CANON)) + "]")


class PatternError(ValueError):
    """The pattern file is unusable; the message names the entry and why."""


# --------------------------------------------------------------------------
# Anchors: literal strings a match must contain, derived from each regex
# --------------------------------------------------------------------------
#
# Python's re tries a case-insensitive pattern that starts with \b or an
# alternation at every position of the text (no literal-prefix skip), about
# 1.5 us per character for the whole list: 30 s for 100,000 emails. So each
# regex is analysed once (its parse tree) for literal strings that any match
# must contain, as they appear in the "key" of the text: lower-cased, every
# whitespace run collapsed to one space. A text is only given to the regex
# when its key contains them (C substring search), and one trie-shaped regex
# over the rarest anchor of every pattern gates the whole scan. The analysis
# only ever drops constraints it cannot express, so it can skip work but
# never a match (tests/test_screen.py checks this on every true positive).

#: Anchors of a regex: alternatives, each a conjunction of clauses, each clause
#: a set of key strings of which a match's key contains at least one.
Anchors = Tuple[Tuple[FrozenSet[str], ...], ...]
#: Most strings an exact literal set may grow to (cross products of alternations).
_EXACT_LIMIT = 1024
#: A clause of more strings than this is checked with one WordGate pass, not `in`s.
_GATE_OVER = 6
#: Clauses checked per alternative once the gate passed (the most selective ones).
_CHECKED_CLAUSES = 3
#: Characters rare in ordinary email: anchors holding them are selective.
_RARE = frozenset("<>{}[]|_=\\")
_SPACES = re.compile(" {2,}")
#: Characters below " " (a C scan; min() over the characters cost more than the rest of text_key).
_CONTROL = re.compile(r"[\x00-\x1f]")
_REPEATS = tuple(op for op in (_sre_c.MAX_REPEAT, _sre_c.MIN_REPEAT,
                               getattr(_sre_c, "POSSESSIVE_REPEAT", None)) if op is not None)
_ZERO_WIDTH = tuple(op for op in (_sre_c.AT, _sre_c.ASSERT, _sre_c.ASSERT_NOT) if op is not None)


def text_key(text: str) -> str:
    """The form anchors are looked up in: lower-cased (characters IGNORECASE
    equates mapped to one of them), whitespace runs as one space."""
    if text.isascii():
        key = text.lower()
        if "\n" in key:
            key = key.replace("\n", " ")
        if "\t" in key:
            key = key.replace("\t", " ")
        if key and _CONTROL.search(key) is None:  # no other control character: only runs of spaces left
            while "  " in key:
                key = key.replace("  ", " ")
            return key
    else:
        key = text.lower()
        if _CASE_ODD.search(text) is not None or _CASE_ODD.search(key) is not None:
            key = text.translate(_CASE_CANON).lower().translate(_CASE_CANON)
    if not key:
        return key
    collapsed = " ".join(key.split())
    # keep one space for leading / trailing whitespace: an anchor may start or end with it
    if key[0].isspace():
        collapsed = " " + collapsed
    if key[-1].isspace() and collapsed != " ":
        collapsed += " "
    return collapsed


def _char_key(code: int) -> str:
    ch = chr(code)
    if ch.isspace():
        return " "
    return ch.translate(_CASE_CANON).lower().translate(_CASE_CANON)


def _class_chars(av) -> Optional[FrozenSet[str]]:
    """The key characters a [...] class stands for, when it is a short list of
    literals or only whitespace; None otherwise."""
    chars = set()
    for op, arg in av:
        if op is _sre_c.LITERAL:
            chars.add(_char_key(arg))
        elif op is _sre_c.CATEGORY and arg in (_sre_c.CATEGORY_SPACE, getattr(_sre_c, "CATEGORY_UNI_SPACE", None)):
            chars.add(" ")
        else:
            return None
    return frozenset(chars) if 0 < len(chars) <= 8 else None


def _join(a: FrozenSet[str], b: FrozenSet[str]) -> FrozenSet[str]:
    """Every string of `a` followed by every string of `b` (in key form). A string
    that ends with another one of the set is dropped: whatever follows, the
    shorter one is found wherever the longer one is."""
    joined = {_SPACES.sub(" ", x + y) for x in a for y in b}
    return frozenset(s for s in joined if not any(s[i:] in joined for i in range(1, len(s))))


def _exact(op, av) -> Optional[FrozenSet[str]]:
    """Every key string one item can match, when that set is small and finite."""
    if op is _sre_c.LITERAL:
        return frozenset([_char_key(av)])
    if op in _ZERO_WIDTH:
        return frozenset([""])
    if op is _sre_c.IN:
        return _class_chars(av)
    if op is _sre_c.CATEGORY:
        return _class_chars([(op, av)])
    if op is _sre_c.SUBPATTERN:
        return _exact_seq(av[-1])
    if op is _sre_c.BRANCH:
        out: set = set()
        for alternative in av[1]:
            sub = _exact_seq(alternative)
            if sub is None:
                return None
            out |= sub
            if len(out) > _EXACT_LIMIT:
                return None
        return frozenset(out)
    if op in _REPEATS:
        low, high, item = av
        sub = _exact_seq(item)
        if sub is None:
            return None
        if sub == frozenset([" "]):  # \s+ / \s* : one space in the key (or none)
            return frozenset([" "]) if low >= 1 else frozenset(["", " "])
        if (low, high) == (0, 1):
            return sub | frozenset([""])
        if low == high == 1:
            return sub
    return None


def _exact_seq(items) -> Optional[FrozenSet[str]]:
    cur = frozenset([""])
    for op, av in items:
        sub = _exact(op, av)
        if sub is None or len(cur) * len(sub) > _EXACT_LIMIT:
            return None
        cur = _join(cur, sub)
    return cur


def _useful(clause: FrozenSet[str]) -> bool:
    return bool(clause) and all(s.strip() for s in clause)


def _minimal(clause: FrozenSet[str]) -> FrozenSet[str]:
    """Drop strings that contain another string of the clause (found anyway)."""
    lengths = sorted({len(s) for s in clause})
    return frozenset(s for s in clause
                     if not any(s[i:i + n] in clause for n in lengths if n < len(s)
                                for i in range(len(s) - n + 1)))


def _score(clause: FrozenSet[str]) -> Tuple[int, int]:
    """How selective a clause is: its weakest string's weight, then fewer strings.
    Multi-word strings and characters like < { [ | are rare in ordinary email."""
    def weight(s: str) -> int:
        core = s.strip()
        return len(core) + 4 * core.count(" ") + 3 * sum(1 for ch in core if ch in _RARE)
    return min(map(weight, clause)), -len(clause)


def _required(items) -> List[FrozenSet[str]]:
    """Clauses every match of the parsed sequence `items` satisfies (never too strict)."""
    clauses: List[FrozenSet[str]] = []
    cur = frozenset([""])

    def flush():
        nonlocal cur
        if _useful(cur):
            clauses.append(cur)
        cur = frozenset([""])

    for op, av in items:
        sub = _exact(op, av)
        if sub is not None:
            if len(sub) > 1:
                # before the set multiplies, keep its parts as clauses of their
                # own: smaller (if weaker) ones, which the gate may prefer
                for part in (cur, sub):
                    if _useful(part):
                        clauses.append(part)
            if len(cur) * len(sub) <= _EXACT_LIMIT:
                cur = _join(cur, sub)
                continue
            flush()
            cur = sub
            continue
        flush()
        if op is _sre_c.SUBPATTERN:
            clauses.extend(_required(av[-1]))
        elif op is _sre_c.BRANCH:
            union: set = set()
            for alternative in av[1]:
                options = [c for c in _required(alternative) if _useful(c)]
                if not options:  # this alternative needs no literal: the branch needs none
                    union = set()
                    break
                union |= max(options, key=_score)
            if union:
                clauses.append(frozenset(union))
        elif op in _REPEATS and av[0] >= 1:
            clauses.extend(_required(av[2]))
        elif op is getattr(_sre_c, "ATOMIC_GROUP", None):
            clauses.extend(_required(av))
        # anything else (classes, lookarounds, backrefs, optional parts) requires no literal
    flush()
    return clauses


def derive_anchors(regex: str) -> Optional[Anchors]:
    """Per top-level alternative, the clauses its matches satisfy, most selective
    first; None when some alternative has none (the regex then always runs)."""
    try:
        items = list(_sre_parse.parse(regex, REGEX_FLAGS))
    except Exception:  # noqa: BLE001 - no anchors is always safe
        return None
    alternatives = [items]
    branches = [i for i, (op, _) in enumerate(items) if op is _sre_c.BRANCH]
    if len(branches) == 1:  # the parser moves a common prefix (like \b) out of the alternation
        i = branches[0]
        alternatives = [items[:i] + list(alt) + items[i + 1:] for alt in items[i][1][1]]
    anchors = []
    for alternative in alternatives:
        clauses = {_minimal(c) for c in _required(alternative) if _useful(c)}
        if not clauses:
            return None
        ranked = sorted(clauses, key=_score, reverse=True)
        gate = _gate_clause(ranked)
        # the gate's clause first (the gate already found it), then the most selective others
        anchors.append((gate,) + tuple(c for c in ranked if c != gate)[:_CHECKED_CLAUSES - 1])
    return tuple(anchors)


def _gate_clause(clauses: Sequence[FrozenSet[str]]) -> FrozenSet[str]:
    """The clause an alternative contributes to the gate: the one a text is
    least likely to contain by chance (few strings, each long or odd: a rough
    estimate, every two characters of weight about ten times rarer), with
    a small charge per string (the gate runs on every text)."""
    def cost(clause: FrozenSet[str]) -> float:
        weight = min(_score(clause)[0], 12)
        return len(clause) * (10.0 ** (-weight / 2.0) + 0.0002)
    # a lone comma or colon is in most texts whatever the estimate says
    eligible = [c for c in clauses if _score(c)[0] >= 3] or list(clauses)
    return min(eligible, key=cost)


def _matcher(clause: FrozenSet[str]):
    """A clause as checked at scan time: a few strings, or one WordGate."""
    if len(clause) > _GATE_OVER:
        return WordGate(clause)
    return tuple(sorted(clause))


def _anchored(matchers, key: str) -> bool:
    """Does `key` satisfy some alternative's clauses (matchers from `_matcher`)?"""
    if matchers is None:
        return True
    for clauses in matchers:
        for clause in clauses:
            if type(clause) is tuple:
                if not any(s in key for s in clause):
                    break
            elif clause.search(key) is None:
                break
        else:
            return True
    return False


class WordGate:
    """Does a key contain any of a fixed set of words? An Aho-Corasick automaton
    (pyahocorasick, C): one pass over the key whatever the number of words.

    It replaced a trie-shaped `re` alternation, which tries the trie at every
    position: 13.5 us vs ~4 us per 355-character sample email with the
    shipped list's ~360 words, on every record screened; and it is built in
    microseconds where compiling the regexes took ~0.15 s of every start.
    """

    def __init__(self, words: Iterable[str]):
        self.words = frozenset(words)
        if not all(self.words):
            raise ValueError("a gate word must not be empty")
        self._automaton = ahocorasick.Automaton(ahocorasick.STORE_ANY, ahocorasick.KEY_STRING)
        for word in sorted(self.words):
            self._automaton.add_word(word, word)
        self._automaton.make_automaton()

    def search(self, key: str) -> Optional[str]:
        """A word found in `key` (the first one the scan meets), else None."""
        for _end, word in self._automaton.iter(key):
            return word
        return None

    def __reduce__(self):
        # rebuilt from its words (a few ms) rather than pickling the automaton's internals
        return WordGate, (self.words,)


@dataclasses.dataclass(frozen=True)
class Pattern:
    """One named regex of the maintained list (compiled once, with its anchors)."""

    name: str
    regex: str
    description: str = ""
    compiled: "re.Pattern[str]" = dataclasses.field(default=None, repr=False, compare=False)
    anchors: Optional[Anchors] = dataclasses.field(default=None, repr=False, compare=False)
    _matchers: Any = dataclasses.field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.compiled is None:
            object.__setattr__(self, "compiled", re.compile(self.regex, REGEX_FLAGS))
        if self.anchors is None:
            object.__setattr__(self, "anchors", derive_anchors(self.regex))
        if self.anchors is not None and self._matchers is None:
            object.__setattr__(self, "_matchers", tuple(tuple(_matcher(c) for c in alt) for alt in self.anchors))

    def search(self, text: str, key: Optional[str] = None) -> bool:
        """Does the (already normalized) text match? `key` = text_key(text), if at hand."""
        if self._matchers is not None and not _anchored(self._matchers, text_key(text) if key is None else key):
            return False
        return self.compiled.search(text) is not None


@dataclasses.dataclass(frozen=True)
class PatternSet:
    """The loaded patterns in file order, and the gate over all their anchors."""

    patterns: Tuple[Pattern, ...]
    source: str = "<inline>"
    version: Any = None
    gate: "Optional[WordGate]" = dataclasses.field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.gate is None and self.patterns and all(p.anchors for p in self.patterns):
            # the most selective clause of every alternative: a text none of
            # them occurs in matches no pattern
            words = _minimal(frozenset(s for p in self.patterns for clauses in p.anchors for s in clauses[0]))
            object.__setattr__(self, "gate", WordGate(words))

    def __iter__(self) -> Iterator[Pattern]:
        return iter(self.patterns)

    def __len__(self) -> int:
        return len(self.patterns)

    @functools.cached_property
    def names(self) -> Tuple[str, ...]:
        # cached: scan_record asks for every record (a tuple of ~40 names each time cost ~5 us)
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
    raises PatternError naming the entry otherwise. A local file is parsed
    once per content (the anchors take a moment to derive); the PatternSet is
    immutable, so sharing it is safe.
    """
    source = path or DEFAULT_PATTERNS_FILE
    if "://" not in source:
        try:
            st = os.stat(source)
        except OSError as e:
            raise PatternError(f"cannot read injection patterns {source}: {e}") from e
        return _load_cached(os.path.abspath(source), st.st_mtime_ns, st.st_size)
    return _load(source)


@functools.lru_cache(maxsize=16)
def _load_cached(source: str, mtime_ns: int, size: int) -> PatternSet:
    return _load(source)


def _load(source: str) -> PatternSet:
    try:
        if "://" in source:
            from apache_beam.io.filesystems import FileSystems
            with FileSystems.open(source) as f:
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
