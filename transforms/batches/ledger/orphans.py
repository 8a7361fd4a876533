"""Finding a batch the ledger never heard of (a writer died between create and record).

The Message Batches API has no lookup by custom_id: :func:`find_batch_by_first_custom_id`
narrows candidates by creation time and request count and confirms ended ones
by scanning their results (:class:`BatchMatch`). A repair and audit tool, not
part of every submission; it needs only an Anthropic client, not a ledger.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Iterator, Optional

@dataclasses.dataclass(frozen=True)
class BatchMatch:
    """A batch that may hold a submission. ``confirmed`` is True when its results
    contain the custom_id, None when it has not ended (results unreadable yet)."""

    batch_id: str
    created_at: dt.datetime
    processing_status: str
    request_count: int
    confirmed: Optional[bool]


def find_batch_by_first_custom_id(client: Any, custom_id: str, created_after: dt.datetime, *,
                                  request_count: Optional[int] = None, confirm: bool = True,
                                  page_size: int = 100) -> Iterator[BatchMatch]:
    """Batches created at or after ``created_after`` that may hold the request
    ``custom_id`` (use the submission's first one: custom_ids are unique per
    content, so any one identifies the submission).

    LIMITATION: ``batches.list`` returns no requests. This pages through the
    list (newest first, stopping at ``created_after``), keeps batches whose
    total request count equals ``request_count`` (when given), and for ended
    batches scans the results for ``custom_id`` (a full stream of the results
    file: costly for big batches; only confirmed ones are yielded). Batches not
    ended yet are yielded with ``confirmed=None``: the API cannot tell yet.
    The listing covers the API key's workspace only.
    """
    if created_after.tzinfo is None:
        raise ValueError("created_after must be timezone-aware")
    for batch in client.messages.batches.list(limit=page_size):  # auto-pages, newest first
        created = batch.created_at
        if created < created_after:
            break
        counts = batch.request_counts
        total = counts.processing + counts.succeeded + counts.errored + counts.canceled + counts.expired
        if request_count is not None and total != request_count:
            continue
        match = BatchMatch(batch.id, created, batch.processing_status, total, None)
        if batch.processing_status != "ended" or not confirm:
            yield match
            continue
        if any(r.custom_id == custom_id for r in client.messages.batches.results(batch.id)):
            yield dataclasses.replace(match, confirmed=True)
