"""The one definition of the job's modes: how records are asked of Claude.

Every module that needs to know "is this a batch mode?" or "are records
packed?" asks here, so the lists cannot drift apart.
"""
from __future__ import annotations

import enum
from typing import Tuple

__all__ = ["Mode", "MODES", "BATCH_MODES", "PACKED_MODES", "MESSAGES_MODES", "CHOOSABLE",
           "is_batch", "is_packed"]


class Mode(str, enum.Enum):
    """A route to the API. The value is the flag's spelling (``--mode packed-batch``)."""

    SYNC = "sync"                  # Messages API, one record per call
    PACKED = "packed"              # Messages API, a pack of records per call
    BATCH = "batch"                # Message Batches API, one record per request (50% price)
    PACKED_BATCH = "packed-batch"  # Message Batches API, packs as requests
    AUTO = "auto"                  # the planner picks one of the four from size and deadline

    def __str__(self) -> str:
        return self.value


#: The four concrete modes, in the order tables print them (dearest first).
MODES: Tuple[str, ...] = tuple(m.value for m in (Mode.SYNC, Mode.PACKED, Mode.BATCH, Mode.PACKED_BATCH))
#: What `--mode` accepts: a concrete mode, or `auto` (resolved before the graph is built).
CHOOSABLE: Tuple[str, ...] = MODES + (Mode.AUTO.value,)
#: Modes that go through the Message Batches API. `auto` is not one of them:
#: it is resolved to a concrete mode before anything asks.
BATCH_MODES: Tuple[str, ...] = (Mode.BATCH.value, Mode.PACKED_BATCH.value)
#: Modes that go through the Messages API.
MESSAGES_MODES: Tuple[str, ...] = (Mode.SYNC.value, Mode.PACKED.value)
#: Modes whose requests hold packs of records.
PACKED_MODES: Tuple[str, ...] = (Mode.PACKED.value, Mode.PACKED_BATCH.value)


def is_batch(mode: str) -> bool:
    """True for the Message Batches modes; raises ValueError for `auto` or an unknown name."""
    return _concrete(mode) in BATCH_MODES


def is_packed(mode: str) -> bool:
    """True for the modes that pack records; raises ValueError for `auto` or an unknown name."""
    return _concrete(mode) in PACKED_MODES


def _concrete(mode: str) -> str:
    value = Mode(str(mode)).value  # ValueError names the bad spelling
    if value == Mode.AUTO.value:
        raise ValueError("mode 'auto' must be resolved to a concrete mode first")
    return value
