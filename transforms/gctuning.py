"""The garbage collector's settings while a job (or one of its helper processes) works."""
from __future__ import annotations

import contextlib
import gc
from typing import Iterator

#: Allocations between young-generation collections while a job runs (Python's
#: default is 700). A bounded run allocates millions of short-lived, acyclic
#: objects (rows, requests, decoded elements) that reference counting frees;
#: collecting every 700 of them cost about a tenth of the batch route's CPU.
GEN0_THRESHOLD = 50_000


def lighten() -> None:
    """From now on: the objects of start-up (modules, the graph) frozen out of
    every collection, and fewer young-generation collections."""
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, *gc.get_threshold()[1:])


@contextlib.contextmanager
def lighter_gc() -> Iterator[None]:
    """lighten() while the block runs; the settings of before after it."""
    before = gc.get_threshold()
    lighten()
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
