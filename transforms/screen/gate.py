"""The cheap pre-filter of the injection screen: literal anchors and the word gate.

Python's ``re`` is slow on case-insensitive alternations, so every pattern's
parse tree is analysed once (:func:`derive_anchors`) for literal strings any
match must contain, in the form of the text's key (:func:`text_key`:
lower-cased, whitespace collapsed). A text is only given to a regex when its
key holds that regex's anchors, and one Aho-Corasick automaton over the rarest
anchor of every pattern (:class:`WordGate`) decides in one pass whether any
regex needs to run at all. The analysis only ever drops constraints, so it can
skip work but never a match. Knows nothing of pattern files or records.
"""
from __future__ import annotations

import re
from typing import FrozenSet, Iterable, List, Optional, Sequence, Tuple

import ahocorasick

try:  # the regex parser: re._parser since Python 3.11, sre_parse before
    from re import _constants as _sre_c
    from re import _parser as _sre_parse
except ImportError:  # pragma: no cover - Python < 3.11
    import sre_constants as _sre_c
    import sre_parse as _sre_parse

#: Every pattern is compiled with these flags (the YAML file's header explains them).
REGEX_FLAGS = re.IGNORECASE | re.MULTILINE | re.VERBOSE


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
