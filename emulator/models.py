"""The models the emulator knows: one table, as the API publishes it.

Each model id maps to its minimum cacheable prefix (tokens; the table in
the API notes, docs/anthropic-api.md §2 of the shared notes), its context
window and its maximum output tokens (`max_tokens` above it is refused).
A model id not in the table is answered 404 `not_found_error`
("model: <id>"), as the API does. `EmulatorConfig.models` adds or
overrides entries (`{id: {"min_cacheable_tokens", "context_window",
"max_output_tokens"}}`, missing fields taken from DEFAULT).

Where the figures come from: the ids are those the `anthropic` SDK 2.14
lists (`anthropic.types.ModelParam`) plus the older dated ids of the
Claude 3/4 models. The minimum cacheable prefixes are the published table
(sources disagree on a few; noted below). Context windows and output
maxima are Anthropic's models overview where it gives them (Claude 3 and
Claude 4 to 4.5); for the newer ids it gives none we could check, so they
are assumed (200K context, 64K output; 128K for Opus 4.6) and marked so.
These numbers change: they are data, overridable, not constants in code.

The caching minimum is recorded here only: prompt caching still uses
`EmulatorConfig.min_cacheable_tokens` (a later change switches to this table).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    min_cacheable_tokens: int
    context_window: int
    max_output_tokens: int


#: Fields of an entry the config did not give.
DEFAULT = ModelInfo(min_cacheable_tokens=4096, context_window=200_000, max_output_tokens=64_000)


def _m(min_cache: int, context: int = 200_000, max_out: int = 64_000) -> ModelInfo:
    return ModelInfo(min_cache, context, max_out)


#: model id -> ModelInfo. Comments: "assumed" = context/output not published where we looked.
MODELS: Dict[str, ModelInfo] = {
    # 5 generation (SDK 2.14 ids). Cache minimum: 512 for the Opus 5 family; one
    # source says 512 for the other 5-generation models too, another lists
    # claude-sonnet-5 at 1,024: the others are kept at 1,024 (the larger). Assumed limits.
    "claude-opus-5-5": _m(512),
    "claude-opus-5": _m(512),
    "claude-sonnet-5-5": _m(1024),
    "claude-sonnet-5": _m(1024),
    "claude-haiku-5-5": _m(1024),
    "claude-fable-5-2": _m(1024),
    "claude-fable-5-1": _m(1024),
    "claude-fable-5": _m(1024),
    "claude-mythos-5-2": _m(1024),
    "claude-mythos-5-1": _m(1024),
    "claude-mythos-5": _m(1024),
    "claude-mythos-preview": _m(1024),
    # 4 generation. opus-4-8, 4-7, 4-6, sonnet-4-6: assumed limits (Opus 4.6: 128K output).
    "claude-opus-4-8": _m(1024),
    "claude-opus-4-7": _m(2048),
    "claude-opus-4-6": _m(4096, max_out=128_000),
    "claude-sonnet-4-6": _m(1024),  # some sources: 2,048
    "claude-opus-4-5": _m(4096),
    "claude-opus-4-5-20251101": _m(4096),
    "claude-haiku-4-5": _m(4096),
    "claude-haiku-4-5-20251001": _m(4096),
    "claude-sonnet-4-5": _m(1024),
    "claude-sonnet-4-5-20250929": _m(1024),
    "claude-opus-4-1": _m(1024, max_out=32_000),
    "claude-opus-4-1-20250805": _m(1024, max_out=32_000),
    "claude-opus-4-0": _m(1024, max_out=32_000),
    "claude-opus-4-20250514": _m(1024, max_out=32_000),
    "claude-sonnet-4-0": _m(1024),
    "claude-sonnet-4-20250514": _m(1024),
    # 3 generation ("claude-haiku-3-5 / 3" in the notes).
    "claude-3-5-haiku-latest": _m(2048, max_out=8192),
    "claude-3-5-haiku-20241022": _m(2048, max_out=8192),
    "claude-3-haiku-20240307": _m(2048, max_out=4096),
}


def lookup(model: str, overrides: Optional[Mapping[str, Mapping[str, Any]]] = None) -> Optional[ModelInfo]:
    """The model's entry (config overrides first), or None for an unknown id."""
    if overrides:
        extra = overrides.get(model)
        if extra is not None:
            base = MODELS.get(model, DEFAULT)
            return dataclasses.replace(base, **{k: int(v) for k, v in extra.items()})
    return MODELS.get(model)


def check_overrides(overrides: Any) -> None:
    """Raise ValueError for a malformed `models` config value."""
    if not isinstance(overrides, dict):
        raise ValueError("models must be a mapping {model id: {field: value}}")
    names = {f.name for f in dataclasses.fields(ModelInfo)}
    for model, fields in overrides.items():
        if not isinstance(model, str) or not model or not isinstance(fields, dict):
            raise ValueError(f"models: {model!r} must map a model id to a mapping of fields")
        unknown = sorted(set(fields) - names)
        if unknown:
            raise ValueError(f"models.{model}: unknown field(s) {', '.join(unknown)}")
        for k, v in fields.items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"models.{model}.{k} must be a positive integer")
