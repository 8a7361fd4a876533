"""Memoizing by identity: work that depends only on a batch's shared params.

A batch's requests share their instructions and schema as one object each
(BatchStore.create interns them), so what depends only on those (token
counts, prompt-cache keys) is worked out once per batch, not once per request.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

#: Arguments compared by value; anything else (lists, dicts) by identity.
_SCALARS = (str, int, float, bool, type(None))


#: Never an argument: what the last call's arguments are before the first call.
_NEVER = object()


def _key(arg: Any) -> Tuple[Any, Any]:
    return (type(arg), arg) if isinstance(arg, _SCALARS) else (object, id(arg))


class IdentityMemo:
    """fn(*args), remembered per argument identity (scalars: per value).

    fn must be pure and its arguments never mutated. The arguments are held,
    so an id cannot be reused while its entry lives; the memo is cleared when
    full, so arguments that are never shared cost one miss each and stay bounded.
    """

    #: Distinct argument tuples kept: far more than the prompts of a few live batches.
    MAX_ENTRIES = 64

    def __init__(self, fn: Callable[..., Any]):
        self._fn = fn
        self._entries: Dict[Tuple[Any, ...], Tuple[Tuple[Any, ...], Any]] = {}
        self._last: Tuple[Tuple[Any, ...], Any] = ((_NEVER,), None)  # the (args, value) of the last call

    def __call__(self, *args: Any) -> Any:
        # A batch's requests repeat one set of arguments: the same objects as
        # the last call's are a hit without building a key (~5x cheaper).
        last_args, value = self._last
        if len(args) == len(last_args):
            i = 0
            for arg in args:  # (a loop: cheaper than all(map(is_, ...)) for a few arguments)
                if arg is not last_args[i]:
                    break
                i += 1
            else:
                return value
        key = tuple(map(_key, args))
        hit = self._entries.get(key)
        if hit is None:
            hit = (args, self._fn(*args))
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = hit
        self._last = (args, hit[1])  # these objects (equal scalars may be others) are held too
        return hit[1]
