"""Prompt caching, modelled on the API: prefixes of the system prompt.

A `cache_control` breakpoint on a block of a list-valued `system` makes the
system text up to and including that block a cacheable prefix (per model).
Prefixes shorter than `min_cacheable_tokens` are silently not cached. The
longest live prefix is read (`cache_read_input_tokens`); the part of the
longest breakpoint's prefix beyond it is written (`cache_creation_input_tokens`).
Entries live for their TTL (5m or 1h, scaled by time_scale), refreshed on
every hit. Other places `cache_control` may appear (messages, top level)
are accepted and ignored.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import Any, Dict, List, Sequence, Tuple

from emulator.memo import IdentityMemo
from emulator.tokenizer import system_tokens

TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}


@dataclasses.dataclass(frozen=True)
class CachePlan:
    """Frozen: a batch's requests mostly get equal plans, and share one."""

    read: int = 0
    create: int = 0
    keys: Sequence[Tuple[Tuple[str, str], float]] = ()


_NO_PLAN = CachePlan()
#: What _breakpoints gives: [(tokens, key, ttl)] and ((key, ttl), ...) of the same prefixes.
Breakpoints = Tuple[List[Tuple[int, Tuple[str, str], float]], Tuple[Tuple[Tuple[str, str], float], ...]]
#: The breakpoints of a system that caches nothing.
NO_BREAKPOINTS: Breakpoints = ([], ())


class PromptCache:
    def __init__(self):
        self.entries: Dict[Tuple[str, str], float] = {}  # key -> expiry (monotonic)
        self._breakpoints = IdentityMemo(_breakpoints)
        self._last_plan = _NO_PLAN

    def clear(self) -> None:
        self.entries.clear()

    def breakpoints(self, model: str, system: Any, min_tokens: int, time_scale: float) -> Breakpoints:
        """The cacheable prefixes of `system` (see _breakpoints), worked out once per system object."""
        if not isinstance(system, list):
            return NO_BREAKPOINTS
        return self._breakpoints(model, system, min_tokens, time_scale)

    def plan(self, model: str, system: Any, min_tokens: int, time_scale: float) -> CachePlan:
        """What caching does for this request (nothing is stored until commit)."""
        return self.plan_for(self.breakpoints(model, system, min_tokens, time_scale))

    def plan_for(self, found: Breakpoints) -> CachePlan:
        """plan() of a request whose system has these breakpoints."""
        breakpoints, keys = found
        if not breakpoints:
            return _NO_PLAN
        now = time.monotonic()
        read = 0
        entries = self.entries
        for tokens, key, _ in reversed(breakpoints):
            if entries.get(key, -1.0) > now:
                read = tokens
                break
        create = breakpoints[-1][0] - read
        if create < 0:
            create = 0
        last = self._last_plan
        if last.keys is keys and last.read == read and last.create == create:
            return last  # the same plan as the last request's (plans are frozen)
        plan = self._last_plan = CachePlan(read, create, keys)
        return plan

    def commit(self, plan: CachePlan) -> None:
        now = time.monotonic()
        for key, ttl in plan.keys:
            self.entries[key] = now + ttl


def _breakpoints(model: str, system: List[Any], min_tokens: int, time_scale: float) -> Breakpoints:
    """(tokens, key, ttl) of every cacheable prefix of `system`, and their
    (key, ttl) pairs as a plan holds them: a pure function of its arguments,
    hashed once per instructions object (see IdentityMemo)."""
    h = hashlib.sha256()
    breakpoints = []
    for i, block in enumerate(system):
        text = str(block.get("text", "")) if isinstance(block, dict) else ""
        h.update(len(text).to_bytes(8, "big"))
        h.update(text.encode("utf-8", "surrogatepass"))
        cc = block.get("cache_control") if isinstance(block, dict) else None
        if isinstance(cc, dict) and cc.get("type", "ephemeral") == "ephemeral":
            tokens = system_tokens(system[: i + 1])
            if tokens >= min_tokens:
                ttl = TTL_SECONDS.get(str(cc.get("ttl", "5m")), 300.0) * time_scale
                breakpoints.append((tokens, (model, h.copy().hexdigest()), ttl))
    return breakpoints, tuple((key, ttl) for _, key, ttl in breakpoints)
