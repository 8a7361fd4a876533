"""Parsing of the ``anthropic-ratelimit-*`` response headers.

:func:`parse_ratelimit_headers` turns the requests / input-tokens /
output-tokens ``-limit``, ``-remaining`` and ``-reset`` headers into one
:class:`HeaderLimits` per dimension; how a limiter applies them is
:meth:`~transforms.api.ratelimit.base._LimiterBase.observe_headers`.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
from typing import Any, Dict, Mapping, Optional

from transforms.api.ratelimit.buckets import INPUT_TOKENS, OUTPUT_TOKENS, REQUESTS

#: The header name part of each dimension that the API reports.
_HEADER_DIM = {"requests": REQUESTS, "input-tokens": INPUT_TOKENS, "output-tokens": OUTPUT_TOKENS}
_HEADER_PREFIX = "anthropic-ratelimit-"


@dataclasses.dataclass(frozen=True)
class HeaderLimits:
    """One dimension of the ``anthropic-ratelimit-*`` headers (None = absent or garbage)."""

    limit: Optional[int] = None
    remaining: Optional[int] = None
    reset: Optional[datetime.datetime] = None


def _parse_count(value: Any) -> Optional[int]:
    try:
        number = float(str(value).strip())
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or number < 0:
        return None
    return int(number)


def _parse_rfc3339(value: Any) -> Optional[datetime.datetime]:
    text = str(value).strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed


def parse_ratelimit_headers(headers: Optional[Mapping[str, str]]) -> Dict[str, HeaderLimits]:
    """The ``anthropic-ratelimit-{requests,input-tokens,output-tokens}-*`` headers.

    Keyed by dimension (REQUESTS, INPUT_TOKENS, OUTPUT_TOKENS); a dimension
    with none of its headers is absent. Header names are matched
    case-insensitively; unparsable values count as absent. The combined
    ``anthropic-ratelimit-tokens-*`` headers are ignored: the separate input
    and output ones carry strictly more information.
    """
    if not headers:
        return {}
    found: Dict[str, Dict[str, Any]] = {}
    for name, value in headers.items():
        lower = str(name).lower()
        if not lower.startswith(_HEADER_PREFIX):
            continue
        rest = lower[len(_HEADER_PREFIX):]
        head, _, field = rest.rpartition("-")
        dim = _HEADER_DIM.get(head)
        if dim is None or field not in ("limit", "remaining", "reset"):
            continue
        parsed = _parse_rfc3339(value) if field == "reset" else _parse_count(value)
        if parsed is not None:
            found.setdefault(dim, {})[field] = parsed
    return {dim: HeaderLimits(**fields) for dim, fields in found.items()}
