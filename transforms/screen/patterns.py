"""The injection screen's pattern list: loading, validating, and the compiled set.

:func:`load_patterns` reads a YAML list (the maintained
``transforms/data/injection_patterns.yaml`` by default, or any Beam filesystem
path), validates every entry (kebab-case unique names, compiling regexes that
never match the empty string) and raises :class:`PatternError` naming the
entry otherwise. A :class:`Pattern` is one compiled regex with its anchors; a
:class:`PatternSet` is the patterns in file order plus the word gate over all
of them (both built with ``gate.py``). Scanning text with them is ``injection.py``.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Tuple, Union

import yaml

from transforms.screen.gate import (REGEX_FLAGS, Anchors, WordGate, _anchored, _matcher, _minimal, derive_anchors,
                                    text_key)

DEFAULT_PATTERNS_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                                     "injection_patterns.yaml")
_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*\Z")


class PatternError(ValueError):
    """The pattern file is unusable; the message names the entry and why."""



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
