"""Configuration of the emulator: one dataclass, loadable from YAML or JSON.

Every number that shapes a run (delays, limits, faults, time scale) lives
here so a test, a benchmark or the command line can set it, and so it can be
changed while the server runs (`Emulator.configure`, `POST /_emulator/config`).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Mapping, Optional

from emulator import models as model_table
from emulator.faults import FaultSet

#: The real API's limits on one Message Batch.
MAX_BATCH_REQUESTS = 100_000
MAX_BATCH_BYTES = 256 * 1024 * 1024
#: Limits reported in the anthropic-ratelimit-* headers when rpm/itpm/otpm are
#: not set. ITPM/OTPM: the API notes' example (anthropic-api.md §4). RPM: 4,000,
#: the published Tier 4 requests limit, not the notes' lowest-tier 1,000: at
#: 1,000 the product's limiter (which learns these headers) paced the end-to-end
#: tests to twice their time (tests/test_modes.py: 36 s instead of 17 s).
DEFAULT_RPM = 4_000
DEFAULT_ITPM = 2_000_000
DEFAULT_OTPM = 400_000
#: Keys a faults mapping may hold that are really config fields.
BATCH_LEVEL_FAULTS = {"batch_delay_s", "batch_expire_after_s"}


@dataclasses.dataclass
class EmulatorConfig:
    """All knobs. Durations marked *scaled* are multiplied by `time_scale`.

    host, port:            where `python -m emulator` binds (library: port 0 = free port).
    seed:                  seeds fault decisions and the order of batch results.
    time_scale:            multiplies simulated durations (latency, batch delay,
                           cache TTL, batch expiry); 0.01 makes a test 100x faster.
    batch_delay_s:         *scaled* time a batch spends in_progress before it ends;
                           its items are processed evenly over that time.
    batch_expire_after_s:  *scaled*; None = never. A batch still processing then
                           ends with its unprocessed items `expired`.
    rpm, itpm, otpm:       per-model rate limits (None = not enforced), enforced as
                           continuously refilling token buckets.
    default_rpm, default_itpm, default_otpm: the limits the anthropic-ratelimit-*
                           headers report for a limit left at None (not enforced:
                           the headers are sent on every answer, as the API does).
    bucket_capacity_s:     bucket size in seconds of refill (1.0 = limit/60 burst).
    model_limits:          per-model overrides {model: {"rpm":..,"itpm":..,"otpm":..}}.
    latency_ms:            *scaled* time to first token of a Messages call.
    output_tokens_per_s:   *scaled* generation speed; None = instant.
    min_cacheable_tokens:  shortest system prefix that prompt caching stores.
    models:                additions/overrides of the model table (emulator.models):
                           {id: {"min_cacheable_tokens", "context_window", "max_output_tokens"}}.
    api_keys:              accepted keys; None = any non-empty key.
    max_batch_requests, max_batch_bytes: the real per-batch limits.
    faults:                {fault_name: spec}; see emulator.faults.
    """

    host: str = "127.0.0.1"
    port: int = 0
    seed: int = 0
    time_scale: float = 1.0
    batch_delay_s: float = 0.0
    batch_expire_after_s: Optional[float] = None
    rpm: Optional[float] = None
    itpm: Optional[float] = None
    otpm: Optional[float] = None
    bucket_capacity_s: float = 1.0
    model_limits: Dict[str, Dict[str, Optional[float]]] = dataclasses.field(default_factory=dict)
    default_rpm: float = DEFAULT_RPM
    default_itpm: float = DEFAULT_ITPM
    default_otpm: float = DEFAULT_OTPM
    latency_ms: float = 0.0
    output_tokens_per_s: Optional[float] = None
    min_cacheable_tokens: int = 1024
    models: Dict[str, Dict[str, int]] = dataclasses.field(default_factory=dict)
    api_keys: Optional[list] = None
    max_batch_requests: int = MAX_BATCH_REQUESTS
    max_batch_bytes: int = MAX_BATCH_BYTES
    faults: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.api_keys, str):
            self.api_keys = [self.api_keys]
        if isinstance(self.faults, dict) and BATCH_LEVEL_FAULTS & set(self.faults):
            # Batch-level "faults" are plain config fields; accept them in a faults file too.
            self.faults = dict(self.faults)
            for name in BATCH_LEVEL_FAULTS & set(self.faults):
                setattr(self, name, self.faults.pop(name))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if self.time_scale < 0:
            raise ValueError("time_scale must be >= 0")
        if self.batch_delay_s < 0:
            raise ValueError("batch_delay_s must be >= 0")
        if self.batch_expire_after_s is not None and self.batch_expire_after_s < 0:
            raise ValueError("batch_expire_after_s must be >= 0 or None")
        for name in ("rpm", "itpm", "otpm"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"{name} must be > 0 or None")
        for name in ("default_rpm", "default_itpm", "default_otpm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        model_table.check_overrides(self.models)
        if self.bucket_capacity_s <= 0:
            raise ValueError("bucket_capacity_s must be > 0")
        if self.output_tokens_per_s is not None and self.output_tokens_per_s <= 0:
            raise ValueError("output_tokens_per_s must be > 0 or None")
        if self.latency_ms < 0:
            raise ValueError("latency_ms must be >= 0")
        if self.max_batch_requests < 1 or self.max_batch_bytes < 1:
            raise ValueError("max_batch_requests and max_batch_bytes must be >= 1")
        FaultSet.parse(self.faults, seed=self.seed)  # raises on a bad fault spec

    def scaled(self, seconds: Optional[float]) -> Optional[float]:
        """A simulated duration in real seconds."""
        return None if seconds is None else seconds * self.time_scale

    def replace(self, **changes: Any) -> "EmulatorConfig":
        """A validated copy with `changes`; unknown names raise ValueError."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown emulator config field(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "EmulatorConfig":
        return cls().replace(**dict(data))


def load_file(path: str) -> Dict[str, Any]:
    """Read a YAML or JSON file into a dict (JSON is valid YAML too)."""
    with open(path, "r", encoding="utf-8") as fh:
        text = fh.read()
    if path.endswith(".json"):
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


def load_faults_file(path: str) -> Dict[str, Any]:
    """A faults file holds either the faults mapping or {"faults": {...}}.

    It may also set the batch-level knobs batch_delay_s / batch_expire_after_s.
    """
    data = load_file(path)
    if set(data) == {"faults"}:
        data = data["faults"] or {}
    FaultSet.parse({k: v for k, v in data.items() if k not in BATCH_LEVEL_FAULTS})
    return data
