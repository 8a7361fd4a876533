"""Load shedding on the Messages route: admit a Work, make it wait, or shed it.

The decision is a pure function (:func:`decide`) of what one process knows
when a Work (one record, or one pack) is about to join its Messages queue:
how many records are already in flight, the bound, how long the rate limiter
projects the queued work ahead plus this one would wait, the time left to
--deadline, and whether the work is urgent. :class:`InFlight` is the
process-wide bookkeeping it reads: records admitted and not yet answered, and
the limiter amounts of admitted work not yet sent.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import threading
from typing import Any, Callable, Optional, Tuple

__all__ = ["SHED_TO", "Verdict", "Decision", "decide", "is_urgent", "default_max_in_flight", "InFlight",
           "Amounts"]

#: --shed-to choices. wait: backpressure only, nothing is shed (the default).
SHED_TO = ("wait", "batch", "dead-letter")
#: Queued Works per concurrent call in the default bound: the pool takes
#: `concurrency x 4` Works per element (messages_api.WORKS_PER_THREAD), so one
#: element fits and only a backlog beyond it counts as "full".
DEFAULT_QUEUE_FACTOR = 4
#: Field values that mean "no" although they are non-empty strings (CSV input
#: has no booleans).
_FALSE_WORDS = frozenset({"", "0", "false", "no", "n", "f", "off", "none", "null"})

#: Limiter amounts of queued work: (requests, input tokens, output tokens).
Amounts = Tuple[float, float, float]


class Verdict(str, enum.Enum):
    ADMIT = "admit"   # join the Messages queue now
    WAIT = "wait"     # block until the queue has room (or the projection is known)
    SHED = "shed"     # leave the Messages route: batch or dead letter


@dataclasses.dataclass(frozen=True)
class Decision:
    verdict: Verdict
    #: Why, for a shed work's dead-letter message (empty when admitted).
    why: str = ""


def _utc(epoch_s: float) -> str:
    return dt.datetime.fromtimestamp(epoch_s, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def decide(*, depth: int, size: int, max_in_flight: int, projected_wait_s: Optional[float],
           now: float, deadline_at: Optional[float], urgent: bool, shed_to: str) -> Decision:
    """Admit, wait or shed one Work of `size` records.

    depth:            records admitted to this process's queue, not yet answered.
    max_in_flight:    the bound on depth. An empty queue always admits, so a
                      work larger than the bound still goes (alone).
    projected_wait_s: seconds the limiter projects the queued work ahead plus
                      this one would wait before being sent; None = not known
                      yet (limits still being learned from the first answer).
    now, deadline_at: epoch seconds; no deadline = no projection shedding.
    urgent:           urgent work is never shed: it waits for room.
    shed_to:          'wait' sheds nothing (backpressure only); 'batch' and
                      'dead-letter' shed non-urgent work that is over the bound
                      or projected past the deadline.
    """
    if shed_to not in SHED_TO:
        raise ValueError(f"shed_to must be one of {SHED_TO}, got {shed_to!r}")
    full = depth > 0 and depth + size > max_in_flight
    if shed_to == "wait" or urgent:
        return Decision(Verdict.WAIT if full else Verdict.ADMIT)
    if full:
        return Decision(Verdict.SHED, f"shed: the Messages queue is full ({depth} of --max-in-flight "
                                      f"{max_in_flight} records in flight)")
    if deadline_at is None:
        return Decision(Verdict.ADMIT)
    if projected_wait_s is None:
        # The limits are being learned from the answer to the work in flight:
        # wait for it rather than admit blind. Nothing in flight: this work is
        # the one that teaches the limits.
        return Decision(Verdict.WAIT if depth > 0 else Verdict.ADMIT)
    if now + projected_wait_s > deadline_at:
        return Decision(Verdict.SHED, f"shed: rate limits project it to be sent at "
                                      f"{_utc(now + projected_wait_s)}, after --deadline {_utc(deadline_at)}")
    return Decision(Verdict.ADMIT)


def is_urgent(value: Any) -> bool:
    """Truthiness of an --urgent-field value, with CSV's strings in mind ('false', '0' are not urgent)."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, str):
        return value.strip().lower() not in _FALSE_WORDS
    return bool(value)


def default_max_in_flight(concurrency: int, records_per_work: int) -> int:
    """The default --max-in-flight: what `concurrency` calls have queued for one pool element."""
    return max(1, concurrency * DEFAULT_QUEUE_FACTOR * max(1, records_per_work))


class InFlight:
    """One process's Messages queue, shared by every DoFn instance and thread.

    records: admitted and not yet answered (the depth --max-in-flight bounds);
    pending: limiter amounts of admitted work whose first request has not been
             granted by the limiter yet (once granted, the limiter's buckets
             already hold it, so it must not be counted twice).
    """

    #: Longest a waiting admission sleeps before it looks again (a projection
    #: that depends on the limiter's learning is not signalled here).
    POLL_S = 0.1

    def __init__(self):
        self._cond = threading.Condition()
        self._records = 0
        self._pending = [0.0, 0.0, 0.0]

    def admit(self, size: int, amounts: Amounts,
              decide_now: Callable[[int, Amounts], Decision]) -> Decision:
        """Ask `decide_now(depth, pending amounts)` under the lock until it does not
        say WAIT; an ADMIT is booked before the lock is released, so two
        threads cannot both take the last room."""
        with self._cond:
            while True:
                decision = decide_now(self._records, tuple(self._pending))
                if decision.verdict is not Verdict.WAIT:
                    break
                self._cond.wait(self.POLL_S)
            if decision.verdict is Verdict.ADMIT:
                self._records += size
                for i, amount in enumerate(amounts):
                    self._pending[i] += amount
            return decision

    def sent(self, amounts: Amounts) -> None:
        """The work's first request was granted by the limiter."""
        with self._cond:
            for i, amount in enumerate(amounts):
                self._pending[i] = max(0.0, self._pending[i] - amount)
            self._cond.notify_all()

    def done(self, size: int) -> None:
        """The work's records are answered (rows or dead letters)."""
        with self._cond:
            self._records = max(0, self._records - size)
            self._cond.notify_all()

    def snapshot(self) -> Tuple[int, Amounts]:
        with self._cond:
            return self._records, tuple(self._pending)


class Ticket:
    """An admitted work's place in :class:`InFlight`: `sent()` once granted,
    `close()` when answered (idempotent, so every exit path may call both)."""

    def __init__(self, queue: InFlight, size: int, amounts: Amounts):
        self._queue = queue
        self._size = size
        self._amounts = amounts
        self._sent = False
        self._closed = False
        self._lock = threading.Lock()

    def sent(self) -> None:
        with self._lock:
            if self._sent:
                return
            self._sent = True
        self._queue.sent(self._amounts)

    def close(self) -> None:
        self.sent()
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.done(self._size)
