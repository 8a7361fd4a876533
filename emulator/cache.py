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
from typing import Any, Dict, List, Tuple

from emulator.memo import IdentityMemo
from transforms.tokens import system_tokens

TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}


@dataclasses.dataclass
class CachePlan:
    read: int = 0
    create: int = 0
    keys: List[Tuple[Tuple[str, str], float]] = dataclasses.field(default_factory=list)


class PromptCache:
    def __init__(self):
        self.entries: Dict[Tuple[str, str], float] = {}  # key -> expiry (monotonic)
        self._breakpoints = IdentityMemo(_breakpoints)

    def clear(self) -> None:
        self.entries.clear()

    def plan(self, model: str, system: Any, min_tokens: int, time_scale: float) -> CachePlan:
        """What caching does for this request (nothing is stored until commit)."""
        plan = CachePlan()
        if not isinstance(system, list):
            return plan
        breakpoints = self._breakpoints(model, system, min_tokens, time_scale)
        if not breakpoints:
            return plan
        now = time.monotonic()
        for tokens, key, _ in reversed(breakpoints):
            if self.entries.get(key, -1.0) > now:
                plan.read = tokens
                break
        plan.create = max(0, breakpoints[-1][0] - plan.read)
        plan.keys = [(key, ttl) for _, key, ttl in breakpoints]
        return plan

    def commit(self, plan: CachePlan) -> None:
        now = time.monotonic()
        for key, ttl in plan.keys:
            self.entries[key] = now + ttl


def _breakpoints(model: str, system: List[Any], min_tokens: int,
                 time_scale: float) -> List[Tuple[int, Tuple[str, str], float]]:
    """(tokens, key, ttl) of every cacheable prefix of `system`: a pure function
    of its arguments, hashed once per instructions object (see IdentityMemo)."""
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
    return breakpoints
