"""The batch ledger: pay for a Message Batch once, even when things restart.

A Message Batch created twice is paid twice, and Beam retries bundles,
schedulers rerun jobs, workers die. The ledger is a directory (a local path or
``gs://bucket/prefix``) holding one small JSON document per *submission*,
named by the submission's content hash (:func:`submission_key`):

    <ledger>/entries/<key>.json        one LedgerEntry per submission
    <ledger>/manifests/<run_id>.json   one free-form JSON document per run

Protocol (what the batch route does for every batch it is about to create)::

    key = submission_key([r.custom_id for r in requests], digest_params(shared_params))
    entry, mine = ledger.reserve(key, run_id, len(requests))
    if not mine:
        if entry.batch_id: reuse it (retrieve / poll / results): nothing new is paid
        else: another writer is creating it right now: wait and look again
              (``reserve`` takes it over by itself once it is stale)
    else:
        entry = ledger.touch(entry)          # before EVERY create attempt: still mine?
        batch = client.messages.batches.create(...)
        entry = ledger.record_batch(entry, batch.id)
        # DuplicateBatch: another writer's batch was recorded first -> cancel ours

States: ``reserved`` (recorded before create) -> ``created`` (batch_id known)
-> ``ended`` -> ``collected``; ``cancelled`` and ``failed`` on the side (see
:data:`TRANSITIONS`). A ``batch_id`` once recorded never changes.

Guarantees
----------
* ``reserve``: for one key, exactly one caller gets ``created_now=True``, across
  threads and processes (local) or across machines (GCS). Everybody else gets
  the stored entry.
* ``update``/``touch``/``take_over``/``record_batch`` are compare-and-swap on the
  whole document: they succeed only if the entry is unchanged since the caller
  read it, else raise :class:`LedgerConflict`.
* Readers never see a half-written document.
* Documents never hold a secret: every string (including ``extra``) is scanned
  and anything that looks like an API key, an ``Authorization`` header, a
  credentialed URL or a private key is refused (:class:`LedgerSecretError`).

``LocalLedger`` (a directory): correct for any number of threads and processes
on ONE machine, on a local POSIX file system. Creation is ``os.link`` of a
fully written, fsynced temp file (atomic, fails if the name exists); updates
are ``os.replace`` of a temp file under an ``fcntl.flock`` lock stripe, after
re-reading the document (the kernel drops a flock when its holder dies, so a
crash never leaves a stale lock). It is NOT a cross-machine lock: on NFS or
other shared file systems flock and link semantics vary, and a local path on a
Dataflow worker is private to that worker. Use ``gs://`` for multi-worker jobs.

``GcsLedger`` (``gs://bucket/prefix``): creation is an upload with
``if_generation_match=0`` and updates are uploads with
``if_generation_match=<generation read>``, so Cloud Storage itself arbitrates
between any number of machines (strongly consistent reads and listings). A
write whose response was lost and retried by the client library (412 on the
retry) is recognised by comparing the stored document with the one written.
Listing is a paged stream; state and run id are also stored as object
metadata so a filtered listing downloads only the matching entries. Under
``STORAGE_EMULATOR_HOST`` the client uses anonymous credentials and the
project ``$GOOGLE_CLOUD_PROJECT`` (or ``local-project``); NOTE that
gcp-storage-emulator (2026.7.19) ignores ``ifGenerationMatch``, so against it
the GCS backend is NOT safe for concurrent writers (tests/gcs_emulator.py has
a precondition-enforcing variant for tests).

Stale reservations: the trade-off
---------------------------------
A ``reserved`` entry with no ``batch_id`` whose ``updated_at`` is older than
``stale_after_s`` (default 15 min) is presumed abandoned (its writer died
before or during ``batches.create``) and ``reserve`` takes it over by CAS
(``takeovers`` counts how often). A writer that is merely slow (a long retry
loop) must call :meth:`Ledger.touch` before each create attempt: that both
refreshes ``updated_at`` and proves it still owns the reservation.

What the ledger cannot see: a writer that died AFTER ``batches.create``
succeeded but BEFORE :meth:`Ledger.record_batch` leaves a batch the ledger does
not know; a takeover then creates a second, paid batch. If the first writer's
process survives and records its batch after a takeover, ``record_batch``
resolves it (the first recorded batch wins, the loser gets
:class:`DuplicateBatch` and should cancel its batch). For the dead-writer case
the API offers no lookup by custom_id: ``batches.list`` returns ids, times,
statuses and request counts, never requests, and a batch's custom_ids are
readable only from its results, after it has ended.
:func:`find_batch_by_first_custom_id` therefore narrows candidates by creation
time and request count and confirms ended ones by scanning their results; an
unended candidate cannot be confirmed (``confirmed=None``): decide by request
count + time window, or wait until it ends. It is a follow-up/repair tool
(e.g. for a scheduled audit after takeovers, which the ``takeovers`` field
makes visible), not something to run on every submission.

Clock skew: staleness uses each writer's wall clock against the stored
``updated_at``; keep ``stale_after_s`` far above any plausible skew.
"""
from __future__ import annotations

import os
import re
import urllib.parse
from typing import Any, Union

from transforms.batches.ledger.base import DEFAULT_STALE_AFTER_S, Ledger
from transforms.batches.ledger.entry import (CANCELLED, COLLECTED, CREATED, ENDED, FAILED, RESERVED, STATES,
                                             TRANSITIONS, DuplicateBatch, LedgerConflict, LedgerEntry, LedgerError,
                                             LedgerSecretError, digest_params, submission_key)
from transforms.batches.ledger.gcs import GcsLedger, storage_client
from transforms.batches.ledger.local import LocalLedger
from transforms.batches.ledger.orphans import BatchMatch, find_batch_by_first_custom_id

__all__ = [
    "RESERVED", "CREATED", "ENDED", "COLLECTED", "CANCELLED", "FAILED", "STATES", "TRANSITIONS",
    "DEFAULT_STALE_AFTER_S", "LedgerError", "LedgerConflict", "DuplicateBatch", "LedgerSecretError",
    "LedgerEntry", "Ledger", "LocalLedger", "GcsLedger", "open_ledger", "submission_key",
    "digest_params", "BatchMatch", "find_batch_by_first_custom_id", "storage_client",
]


def open_ledger(path: Union[str, os.PathLike], **kwargs: Any) -> Ledger:
    """``gs://bucket/prefix`` -> GcsLedger; a local path (or file://) -> LocalLedger."""
    path = os.fspath(path)
    if path.startswith("gs://"):
        return GcsLedger(path, **kwargs)
    if path.startswith("file://"):
        path = urllib.parse.unquote(urllib.parse.urlparse(path).path)
    elif re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]+://", path):
        raise ValueError(f"unsupported ledger location {path!r}: use a local path or gs://bucket/prefix")
    return LocalLedger(path, **kwargs)
