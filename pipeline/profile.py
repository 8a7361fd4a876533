"""What the answers say, folded as the results are read: counts per value of
each short text or boolean field, and count/min/max/mean plus a 10-bin
histogram of each number (bins from the schema's minimum/maximum when it has
them). Bounded memory whatever the number of results: a field with more than
MAX_VALUES distinct values stops counting values and says so."""
from __future__ import annotations

import collections
import json
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

__all__ = ["AnswerProfile", "MAX_VALUES", "EXAMPLES_PER_REASON"]

#: Distinct values counted per field: enough for any enum, few enough to print.
MAX_VALUES = 20
#: Longest text value counted as a category (longer ones are free text).
MAX_CATEGORY_CHARS = 40
#: Bins of a number's histogram.
BINS = 10
#: Dead letters shown per reason in the summary and the report.
EXAMPLES_PER_REASON = 3


def _bounds(schema: Optional[Mapping[str, Any]]) -> Dict[str, Tuple[float, float]]:
    """Numeric fields with both a minimum and a maximum in the output schema."""
    out = {}
    for name, prop in ((schema or {}).get("properties") or {}).items():
        if isinstance(prop, Mapping) and prop.get("type") in ("number", "integer"):
            lo, hi = prop.get("minimum"), prop.get("maximum")
            if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and hi > lo:
                out[name] = (float(lo), float(hi))
    return out


class AnswerProfile:
    """Feed it each result's output (a dict) and each dead letter; read `to_dict()`."""

    def __init__(self, output_schema: Optional[Mapping[str, Any]] = None):
        self._bounds = _bounds(output_schema)
        self._values: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self._too_many: set = set()
        self._numbers: Dict[str, Dict[str, float]] = {}
        self._bins: Dict[str, list] = {}
        self.injection_flags: collections.Counter = collections.Counter()
        self.flagged_records = 0
        self.dead_examples: Dict[str, list] = collections.defaultdict(list)

    def add_output(self, output: Any) -> None:
        if isinstance(output, str):
            try:
                output = json.loads(output)
            except ValueError:
                return
        if not isinstance(output, Mapping):
            return
        for name, value in output.items():
            if isinstance(value, bool) or (isinstance(value, str) and len(value) <= MAX_CATEGORY_CHARS):
                self._count(name, str(value).lower() if isinstance(value, bool) else value)
            elif isinstance(value, (int, float)):
                self._number(name, float(value))

    def _count(self, name: str, value: str) -> None:
        if name in self._too_many:
            return
        values = self._values[name]
        if value not in values and len(values) >= MAX_VALUES:
            self._too_many.add(name)
            del self._values[name]
            return
        values[value] += 1

    def _number(self, name: str, value: float) -> None:
        stats = self._numbers.setdefault(name, {"count": 0, "min": value, "max": value, "sum": 0.0})
        stats["count"] += 1
        stats["min"] = min(stats["min"], value)
        stats["max"] = max(stats["max"], value)
        stats["sum"] += value
        if name in self._bounds:
            lo, hi = self._bounds[name]
            bins = self._bins.setdefault(name, [0] * BINS)
            index = int((value - lo) / (hi - lo) * BINS)
            bins[min(max(index, 0), BINS - 1)] += 1

    def add_flags(self, flags: Iterable[str]) -> None:
        flags = list(flags or ())
        if flags:
            self.flagged_records += 1
            self.injection_flags.update(flags)

    def add_dead(self, record_id: Optional[str], reason: str, message: Optional[str]) -> None:
        examples = self.dead_examples[reason]
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append({"record_id": record_id, "error_message": (message or "")[:200]})

    def to_dict(self) -> Dict[str, Any]:
        numbers = {}
        for name, s in self._numbers.items():
            numbers[name] = {"count": int(s["count"]), "min": s["min"], "max": s["max"],
                             "mean": s["sum"] / s["count"]}
            if name in self._bins:
                lo, hi = self._bounds[name]
                numbers[name]["histogram"] = {"low": lo, "high": hi, "counts": list(self._bins[name])}
        return {
            "values": {name: dict(c.most_common()) for name, c in sorted(self._values.items())},
            "free_text_fields": sorted(self._too_many),
            "numbers": dict(sorted(numbers.items())),
            "injection": {"flagged_records": self.flagged_records,
                          "by_pattern": dict(self.injection_flags.most_common())},
            "dead_letter_examples": {k: v for k, v in sorted(self.dead_examples.items())},
        }
