"""--max-cost-usd during the run: nothing is sent that could take spend past the cap.

Every request (or batch) reserves its worst-case cost before it is sent:
all its input priced as cache writes (the dearest kind of input token) plus
its full max_tokens of output. A Messages call settles with its real cost
when answered; a Message Batch keeps its worst case until the run ends (its
real cost is only known once it has ended), so a run can stop a little before
the cap but never after it. Records that do not fit are dead letters with
reason `budget`. One budget per process (per run id), shared by every thread;
a multi-worker job splits the cap per worker (document: docs/deploy.md).
"""
from __future__ import annotations

import threading
from typing import Dict, Optional, Sequence

from transforms.api.costs import PriceTable
from transforms.prompts.requests import Request

_REGISTRY: Dict[str, "Budget"] = {}
_LOCK = threading.Lock()


class Budget:
    def __init__(self, max_usd: float):
        self.max_usd = float(max_usd)
        self._committed = 0.0
        self._lock = threading.Lock()

    @property
    def committed_usd(self) -> float:
        return self._committed

    def reserve(self, usd: float) -> bool:
        """Commit `usd` if it fits under the cap; False (and nothing committed) if not."""
        with self._lock:
            if self._committed + usd > self.max_usd + 1e-12:
                return False
            self._committed += usd
            return True

    def settle(self, reserved: float, actual: float) -> None:
        with self._lock:
            self._committed += actual - reserved


def get_budget(run_id: str, max_usd: Optional[float]) -> Optional[Budget]:
    """The process-wide budget of a run (None when there is no cap)."""
    if max_usd is None:
        return None
    with _LOCK:
        budget = _REGISTRY.get(run_id)
        if budget is None or budget.max_usd != max_usd:
            budget = _REGISTRY[run_id] = Budget(max_usd)
        return budget


def worst_case_usd(prices: PriceTable, model: str, request: Request, *, batch: bool) -> float:
    """An upper bound on what `request` can cost."""
    usage = {"input_tokens": 0, "cache_creation_input_tokens": request.input_tokens,
             "cache_read_input_tokens": 0, "output_tokens": request.max_tokens}
    return prices.cost(model, usage, batch=batch)


def fitting_prefix(budget: Budget, prices: PriceTable, model: str, requests: Sequence[Request],
                   *, batch: bool) -> int:
    """How many of `requests`, in order, fit the budget; reserves their worst case."""
    n = 0
    for request in requests:
        if not budget.reserve(worst_case_usd(prices, model, request, batch=batch)):
            break
        n += 1
    return n
