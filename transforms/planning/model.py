"""The plan's data (what a mode costs and takes) and the assumptions it states."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional

from transforms.modes import BATCH_MODES


DEFAULT_SAMPLE = 2000
DEFAULT_COUNT_CALLS = 20
#: Records the pilot sends alone and in packs against the emulator (free);
#: against the real API the pilot is off unless --plan-pilot asks for it.
DEFAULT_LOCAL_PILOT = 20
#: anthropic-api.md §4: example lowest-tier limits (configuration, not facts).
LOWEST_TIER_LIMITS = {"rpm": 1_000, "itpm": 2_000_000, "otpm": 400_000}
#: Message Batches: "most finish within 1 h", expire after 24 h.
BATCH_TYPICAL_S = 3600.0
BATCH_BOUND_S = 24 * 3600.0
#: Requests waiting in the batch queue at the lowest tier: more wait for a later round.
BATCH_QUEUE_LIMIT = 200_000
#: Prompt cache lifetime (5-minute TTL, refreshed by every hit).
CACHE_TTL_S = 300.0
#: Real API: time to the first token and generation speed of one call (assumptions).
REAL_LATENCY_S = 1.0
REAL_OUTPUT_TOKENS_PER_S = 100.0
#: Starting the job (reading, grouping) before the first call; a few seconds locally.
STARTUP_S = 10.0
#: Batch requests that write the cache, per batch and instruction variant: the
#: API runs a batch's requests in parallel, so a few miss the cache (assumption).
REAL_BATCH_CACHE_WRITES = 10

RATELIMIT_HEADERS = {"rpm": "anthropic-ratelimit-requests-limit",
                      "itpm": "anthropic-ratelimit-input-tokens-limit",
                      "otpm": "anthropic-ratelimit-output-tokens-limit"}


# ---------------------------------------------------------------------------
# The plan's data


@dataclasses.dataclass
class Assumptions:
    """What the plan could not measure, and says it assumed."""

    rpm: int
    itpm: int
    otpm: int
    limits_source: str
    concurrency: int
    latency_s: float
    output_tokens_per_s: Optional[float]
    startup_s: float
    batch_typical_s: float
    batch_bound_s: float
    batch_queue_limit: int
    cache_ttl_s: float
    first_wave_cache_writes: int
    batch_cache_writes: int
    local: bool


@dataclasses.dataclass
class ModePlan:
    """One mode: requests, tokens (as the summary counts them), cost, time."""

    mode: str
    requests: int
    records: int
    input_tokens: int                 # uncached input, as usage.input_tokens
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    output_tokens: int
    cost_usd: float
    list_cost_usd: float              # the same tokens without the batch discount
    wall_s: float                     # expected
    wall_bound_s: float               # batch: the API's 24 h bound; Messages: = wall_s
    batches: int = 0
    meets_deadline: Optional[bool] = None
    over_budget: Optional[bool] = None
    limited_by: str = ""

    @property
    def batch(self) -> bool:
        return self.mode in BATCH_MODES


@dataclasses.dataclass
class Plan:
    task: str
    model: str
    input: str
    price_table: str
    rows_total: int
    rows_sampled: int
    sampling: str                     # "all", "first" or "random"
    records: int                      # valid records (scaled)
    dead_letters: int
    dead_letters_by_reason: Dict[str, int]
    token_source: str
    output_source: str
    output_per_record: Dict[str, float]
    cache_note: str
    cached_system_tokens: Dict[str, int]
    pilot_cost_usd: float
    modes: Dict[str, ModePlan]
    assumptions: Assumptions
    notes: List[str] = dataclasses.field(default_factory=list)
    deadline_s: Optional[float] = None
    max_cost_usd: Optional[float] = None
    created_at: str = ""

    @property
    def scale(self) -> float:
        return self.rows_total / self.rows_sampled if self.rows_sampled else 1.0

    def cheapest(self) -> ModePlan:
        return min(self.modes.values(), key=lambda m: (m.cost_usd, m.wall_s))

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready (for summary.json's "plan" and the report)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Plan":
        data = dict(data)
        data["modes"] = {k: ModePlan(**v) for k, v in data["modes"].items()}
        data["assumptions"] = Assumptions(**data["assumptions"])
        return cls(**data)
