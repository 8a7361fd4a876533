"""Pay once: the batch route's use of the ledger, and the files that let a
later `collect` job pick up batches a `submit` job created.

For every batch about to be created:
  1. its content hash (custom_ids + everything that shapes the requests) is
     reserved in the ledger; a submission seen before reuses its batch_id;
  2. its requests (ids, hashes, and for packs the records, needed for
     re-asks) are written next to the ledger, so any later job can collect;
  3. the batch is created and its id recorded; if another writer recorded
     one first, ours is cancelled and theirs is used.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import logging
import os
import socket
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from apache_beam.io.filesystems import FileSystems

from transforms import fastjson
from transforms import ledger as ledger_mod
from transforms.records import Record
from transforms.requests import Item, Request, RequestBuilder

_LOG = logging.getLogger(__name__)

#: How long to wait for another writer that holds a fresh reservation of the
#: same content to record its batch, before giving up on this bundle (Beam
#: retries it; by then the batch id is known or the reservation is stale).
_WAIT_FOR_OTHER_WRITER_S = 120.0
_POLL_OTHER_WRITER_S = 1.0


class SubmissionPending(RuntimeError):
    """Another writer is creating this very batch right now; retry later."""


#: The one ASCII character json escapes (as \\u007f) and orjson writes raw.
_DEL = b"\x7f"


def params_digest(builder: RequestBuilder, requests: Sequence[Request]) -> str:
    """Everything that decides what a batch asks: the shared prompt and model,
    and per request its custom_id, max_tokens and content hashes. Two runs
    whose records changed text under the same ids do not share a batch.

    The value is part of every ledger key: it is the sha256 of the same
    bytes it always was (see _digest_line), or no rerun would find its batch."""
    h = hashlib.sha256()
    h.update(_digest_line([builder.task.prompt_sha256, builder.task.model, builder.prompt_cache]))
    for r in requests:
        # Hashed line by line: 100,000 small orjson outputs kept for one join
        # cost more (fresh memory for each) than the json.dumps they replace.
        h.update(_digest_line([r.custom_id, r.max_tokens, [i.input_sha256 for i in r.items]]))
    return h.hexdigest()


def _digest_line(value: Any) -> bytes:
    """json.dumps(value, separators=(",", ":")).encode(), faster.

    For strings and integers (custom ids are ASCII, hashes hex) orjson writes
    the same bytes whenever its output is ASCII without DEL: json escapes
    non-ASCII characters and DEL as \\uXXXX where orjson writes them raw.
    Anything else is encoded by json itself. Not for floats (their text differs).
    """
    try:
        line = fastjson.dumps_bytes(value)
        if line.isascii() and _DEL not in line:
            return line
    except UnicodeEncodeError:
        pass  # a lone surrogate: only json writes it (escaped)
    return json.dumps(value, separators=(",", ":")).encode()


def requests_path(ledger_path: str, key: str) -> str:
    return f"{ledger_path.rstrip('/')}/requests/{key}.json.gz"


_REQUEST_FIELDS = [f.name for f in dataclasses.fields(Request) if f.name != "items"]
_ITEM_FIELDS = [f.name for f in dataclasses.fields(Item)]
_RECORD_FIELDS = [f.name for f in dataclasses.fields(Record)]


def _request_to_json(r: Request) -> Dict[str, Any]:
    # Field by field, not dataclasses.asdict: that deep-copies recursively and
    # costs seconds per 100,000 requests.
    d = {name: getattr(r, name) for name in _REQUEST_FIELDS}
    d["items"] = [{name: getattr(i, name) for name in _ITEM_FIELDS} for i in r.items]
    return d


def _request_from_json(d: Dict[str, Any]) -> Request:
    items = tuple(Item(**{**i, "flags": tuple(i.get("flags") or ())}) for i in d["items"])
    return Request(**{**d, "items": items})


def write_requests(path: str, requests: Sequence[Request], records: Optional[Dict[str, Record]]) -> None:
    """The requests of one submission (and packed records), gzipped JSON."""
    # Requests hold only strings, ints and booleans: orjson writes them as
    # json would. Records' attrs may hold anything (floats, NaN, dates), so
    # they keep json's exact form.
    encoded = fastjson.dumps_bytes([_request_to_json(r) for r in requests], default=str)
    kept = (json.dumps([{name: getattr(r, name) for name in _RECORD_FIELDS} for r in records.values()],
                       ensure_ascii=False, default=str).encode("utf-8") if records else b"null")
    with FileSystems.create(path) as f:
        # Level 1: these files are written on the hot path and read once.
        f.write(gzip.compress(b'{"requests":' + encoded + b',"records":' + kept + b"}", 1))


def read_requests(path: str) -> Tuple[List[Request], Optional[Dict[str, Record]]]:
    with FileSystems.open(path) as f:
        body = fastjson.loads(gzip.decompress(f.read()))
    requests = [_request_from_json(d) for d in body["requests"]]
    records = None
    if body.get("records"):
        records = {d["record_id"]: Record(**{**d, "flags": tuple(d.get("flags") or ())})
                   for d in body["records"]}
    return requests, records


@dataclasses.dataclass(frozen=True)
class LedgerSettings:
    """Where the ledger lives (local path or gs://). Picklable; opened on workers."""

    path: str

    def open(self) -> ledger_mod.Ledger:
        return ledger_mod.open_ledger(self.path)


def submit_once(ledger: ledger_mod.Ledger, ledger_path: str, run_id: str, builder: RequestBuilder,
                requests: Sequence[Request], records: Optional[Dict[str, Record]],
                create: Callable[[], Any], cancel: Callable[[str], Any],
                sleep: Callable[[float], None] = time.sleep) -> Tuple[str, bool, str]:
    """Create the batch for `requests` unless the ledger knows it: (batch_id, reused, key)."""
    key = ledger_mod.submission_key([r.custom_id for r in requests], params_digest(builder, requests))
    path = requests_path(ledger_path, key)
    extra = {"requests": path, "host": socket.gethostname(), "pid": os.getpid()}
    entry, mine = ledger.reserve(key, run_id, len(requests), extra=extra)
    waited = 0.0
    while not mine and entry.batch_id is None:
        if _writer_is_dead(entry):
            # Same machine, process gone: it died before recording a batch id.
            # (If it died between create and record, that batch is unknown to
            # the ledger: the one case the ledger cannot cover, see ledger.py.)
            try:
                ledger.update(entry, state=ledger_mod.FAILED)
            except ledger_mod.LedgerConflict:
                pass
            entry, mine = ledger.reserve(key, run_id, len(requests), extra=extra)
            continue
        if waited >= _WAIT_FOR_OTHER_WRITER_S:
            raise SubmissionPending(f"submission {key[:12]} is being created by another writer")
        sleep(_POLL_OTHER_WRITER_S)
        waited += _POLL_OTHER_WRITER_S
        entry, mine = ledger.reserve(key, run_id, len(requests), extra=extra)
    if not mine:
        _LOG.info("reusing batch %s for submission %s (no new batch, nothing paid twice)",
                  entry.batch_id, key[:12])
        return entry.batch_id, True, key
    write_requests(path, requests, records)
    entry = ledger.touch(entry)
    batch = create()
    try:
        ledger.record_batch(entry, batch.id)
    except ledger_mod.DuplicateBatch as e:
        _LOG.warning("batch %s duplicates %s recorded first; cancelling it", batch.id, e.existing.batch_id)
        cancel(batch.id)
        return e.existing.batch_id, True, key
    return batch.id, False, key


def _writer_is_dead(entry: ledger_mod.LedgerEntry) -> bool:
    """True when the reserving process ran on this machine and no longer exists."""
    if entry.extra.get("host") != socket.gethostname() or not entry.extra.get("pid"):
        return False
    pid = int(entry.extra["pid"])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def mark(ledger: ledger_mod.Ledger, key: str, state: str) -> None:
    """Move entry `key` to `state` when that transition is allowed."""
    entry = ledger.get(key)
    if entry is None or entry.state == state or state not in ledger_mod.TRANSITIONS[entry.state]:
        return
    try:
        ledger.update(entry, state=state)
    except ledger_mod.LedgerConflict:
        pass  # somebody moved it meanwhile; their state wins


def open_entries(ledger: ledger_mod.Ledger, run_id: str) -> Iterable[ledger_mod.LedgerEntry]:
    """Entries of a run whose results have not been written yet."""
    return ledger.list(run_id=run_id, states=(ledger_mod.CREATED, ledger_mod.ENDED))
