"""Fault injection: seeded, countable, targetable failures.

The pipeline's promise (every record exactly once, nothing billed twice) only
means something if it survives the API misbehaving. Each fault is a spec

    {"rate": p, "times": n, "ids": [...], ...fault-specific options}

- rate  (default 1.0): probability that an eligible request triggers it,
  decided by a hash of (config seed, fault name, how many eligible requests
  this fault has seen): the same run gives the same faults.
- times (default unlimited): total number of firings, after which it is off.
- ids   (optional): only requests containing one of these item ids are
  eligible; pack faults then act on those ids.
A bare number is shorthand for {"rate": number}.

Fault names and their options:

  Messages, HTTP level (checked in this order; at most one status fault fires):
    drop_connection            close the connection without a response
    timeout      hang_s=30     hold the request hang_s REAL seconds, then close
    spend_cap_429              429 rate_limit_error without retry-after (spend cap)
    status_429   retry_after=1 429 rate_limit_error with retry-after
    status_529                 529 overloaded_error
    status_500                 500 api_error
    status_400                 400 invalid_request_error (not retryable)
    status_401                 401 authentication_error
    status_403                 403 permission_error
    status_404                 404 not_found_error
    status_413                 413 request_too_large
    slow         slow_s=1.0    extra REAL seconds before the answer (then normal)
  Packed answers (pack requests, in Messages and in batches):
    pack_drop_ids       count=1   leave k ids out of the results
    pack_duplicate_ids  count=1   answer k ids twice (second copy differs)
    pack_invent_ids     count=1   add k objects with ids not in the request
    pack_invalid_json             answer text is not parseable JSON
    pack_max_tokens               truncated answer, stop_reason max_tokens
    pack_ignore_schema  count=1   k objects violate the item schema
  Batch items:
    batch_item_errored  error_type=api_error   result `errored`
                        (or error_type=invalid_request_error)
    batch_item_expired                         result `expired`
    batch_result_garbled                       answered and billed, but its
                                               results line is cut in half
  Batch level (plain numbers, really config fields, accepted here too):
    batch_delay_s: S          a batch stays in_progress S (scaled) seconds
    batch_expire_after_s: S   a batch still processing after S ends, rest `expired`
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence

HTTP_FAULTS = ("drop_connection", "timeout", "spend_cap_429", "status_429", "status_529",
               "status_500", "status_400", "status_401", "status_403", "status_404", "status_413", "slow")
#: Client-error faults: (HTTP status, error.type, message) of the API's answer.
CLIENT_ERROR_FAULTS = {
    "status_400": (400, "invalid_request_error",
                   "messages.0.content: invalid request (injected by the emulator)"),
    "status_401": (401, "authentication_error", "invalid x-api-key (injected by the emulator)"),
    "status_403": (403, "permission_error",
                   "Your API key does not have permission to use the specified resource "
                   "(injected by the emulator)"),
    "status_404": (404, "not_found_error", "model: not found (injected by the emulator)"),
    "status_413": (413, "request_too_large",
                   "Request exceeds the maximum allowed number of bytes (injected by the emulator)"),
}
PACK_FAULTS = ("pack_drop_ids", "pack_duplicate_ids", "pack_invent_ids", "pack_invalid_json",
               "pack_max_tokens", "pack_ignore_schema")
BATCH_ITEM_FAULTS = ("batch_item_errored", "batch_item_expired", "batch_result_garbled")
ALL_FAULTS = HTTP_FAULTS + PACK_FAULTS + BATCH_ITEM_FAULTS

#: Options each fault accepts besides rate/times/ids, with defaults.
_OPTIONS: Dict[str, Dict[str, Any]] = {
    "timeout": {"hang_s": 30.0},
    "status_429": {"retry_after": 1},
    "slow": {"slow_s": 1.0},
    "pack_drop_ids": {"count": 1},
    "pack_duplicate_ids": {"count": 1},
    "pack_invent_ids": {"count": 1},
    "pack_ignore_schema": {"count": 1},
    "batch_item_errored": {"error_type": "api_error"},
}


def unit_hash(*parts: Any) -> float:
    """A deterministic number in [0, 1) from the parts."""
    h = hashlib.blake2b("|".join(map(str, parts)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0 ** 64


@dataclasses.dataclass
class FaultSpec:
    name: str
    rate: float = 1.0
    times: Optional[int] = None
    ids: Optional[FrozenSet[str]] = None
    options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    seen: int = 0    # eligible requests evaluated so far
    fired: int = 0   # times it fired

    def opt(self, key: str) -> Any:
        return self.options.get(key, _OPTIONS.get(self.name, {}).get(key))

    @classmethod
    def parse(cls, name: str, raw: Any) -> "FaultSpec":
        if name not in ALL_FAULTS:
            raise ValueError(f"unknown fault {name!r}; known: {', '.join(ALL_FAULTS)}")
        if isinstance(raw, bool) or raw is None:
            raw = {"rate": 1.0 if raw in (True, None) else 0.0}
        if isinstance(raw, (int, float)):
            raw = {"rate": float(raw)}
        if not isinstance(raw, Mapping):
            raise ValueError(f"fault {name}: spec must be a mapping or a rate, got {raw!r}")
        raw = dict(raw)
        rate = float(raw.pop("rate", 1.0))
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault {name}: rate must be within 0..1, got {rate}")
        times = raw.pop("times", None)
        if times is not None and (not isinstance(times, int) or times < 0):
            raise ValueError(f"fault {name}: times must be a non-negative integer")
        ids = raw.pop("ids", None)
        if ids is not None:
            if isinstance(ids, str) or not isinstance(ids, Iterable):
                raise ValueError(f"fault {name}: ids must be a list of item ids")
            ids = frozenset(str(i) for i in ids)
        allowed = set(_OPTIONS.get(name, {}))
        unknown = set(raw) - allowed
        if unknown:
            raise ValueError(f"fault {name}: unknown option(s) {sorted(unknown)}; "
                             f"allowed: rate, times, ids{''.join(', ' + a for a in sorted(allowed))}")
        count = raw.get("count")
        if count is not None and (not isinstance(count, int) or count < 1):
            raise ValueError(f"fault {name}: count must be a positive integer")
        return cls(name=name, rate=rate, times=times, ids=ids, options=raw)


class FaultSet:
    """The active faults of a run with their counters."""

    def __init__(self, specs: Mapping[str, FaultSpec], seed: int = 0):
        self.specs = dict(specs)
        self.seed = seed

    @classmethod
    def parse(cls, raw: Optional[Mapping[str, Any]], seed: int = 0) -> "FaultSet":
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ValueError("faults must be a mapping {fault_name: spec}")
        return cls({name: FaultSpec.parse(name, spec) for name, spec in raw.items()}, seed=seed)

    def __bool__(self) -> bool:
        return bool(self.specs)

    def has_any(self, names: Sequence[str]) -> bool:
        return any(n in self.specs for n in names)

    def fire(self, name: str, item_ids: Sequence[str] = ()) -> Optional[FaultSpec]:
        """The spec if fault `name` fires for a request holding `item_ids`."""
        spec = self.specs.get(name)
        if spec is None:
            return None
        if spec.times is not None and spec.fired >= spec.times:
            return None
        if spec.ids is not None and not any(i in spec.ids for i in item_ids):
            return None
        n = spec.seen
        spec.seen += 1
        if spec.rate < 1.0 and unit_hash(self.seed, name, n) >= spec.rate:
            return None
        spec.fired += 1
        return spec

    def choose(self, spec: FaultSpec, ids: Sequence[str], k: Optional[int] = None) -> List[str]:
        """Which ids of a pack the fault acts on: targeted ids, else k seeded picks."""
        if spec.ids is not None:
            chosen = [i for i in ids if i in spec.ids]
            if chosen:
                return chosen
        k = k if k is not None else int(spec.opt("count") or 1)
        ranked = sorted(range(len(ids)), key=lambda j: unit_hash(self.seed, spec.name, spec.fired, j))
        return [ids[j] for j in sorted(ranked[:k])]

    def fired_counts(self) -> Dict[str, int]:
        return {name: spec.fired for name, spec in self.specs.items()}
