"""One limiter per process and budget: :func:`get_limiter`, and :func:`create_limiter`
choosing the local or the Redis backend."""
from __future__ import annotations

from typing import Any, Callable, Optional, TypeVar

from transforms.api import registry
from transforms.api.ratelimit.buckets import Limits
from transforms.api.ratelimit.local import RateLimiter
from transforms.api.ratelimit.shared import RedisRateLimiter

T = TypeVar("T")
def get_limiter(key: str, factory: Callable[[], T]) -> T:
    """The process-wide limiter for ``key``, created by ``factory()`` on first use.

    Every thread of every DoFn instance in this process that names the same
    key (say, a hash of the API key plus the model class) gets the same
    object, for the life of the process. Call it from ``DoFn.setup()`` and
    keep ``key`` and a picklable ``factory`` (e.g. ``functools.partial(
    RateLimiter, limits)``) on the DoFn.

    Why not ``apache_beam.utils.shared.Shared``: a Shared handle is keyed by a
    uuid made when the handle is constructed, so two transforms (sync and
    packed submit, say) spending the same API budget would get two limiters
    and together overshoot; and it holds its object through a weak reference
    with a single keep-alive slot for the whole process, so when another
    stage acquires its own Shared object the limiter can be garbage
    collected between bundles, losing its debt, a 429 pause and learned
    limits. A rate-limit budget belongs to the process, not to a stage, so a
    plain module-level registry keyed by the budget fits better. (A runner
    that starts several SDK processes per VM gets one limiter per process:
    use RedisRateLimiter, or ``share``, to split the budget.)
    """
    return registry.per_process(("limiter", key), factory)


def create_limiter(limits: Optional[Limits] = None, *, redis_url: Optional[str] = None,
                   key_prefix: str = "claude-ratelimit", name: str = "default", **kwargs: Any):
    """A RedisRateLimiter when ``redis_url`` is given, else a local RateLimiter."""
    if redis_url:
        return RedisRateLimiter(redis_url, limits, key_prefix=key_prefix, name=name, **kwargs)
    return RateLimiter(limits, **kwargs)
