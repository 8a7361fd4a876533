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
import hashlib
import json
import logging
import operator
import os
import socket
import threading
import time
import urllib.parse
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import zstandard

from transforms import fastjson
from transforms.api import registry
from transforms.batches import ledger as ledger_mod
from transforms.records import Record
from transforms.prompts.requests import Item, Request, RequestBuilder

_LOG = logging.getLogger(__name__)

#: How long to wait for another writer that holds a fresh reservation of the
#: same content to record its batch, before giving up on this bundle (Beam
#: retries it; by then the batch id is known or the reservation is stale).
_WAIT_FOR_OTHER_WRITER_S = 120.0
_POLL_OTHER_WRITER_S = 1.0


class SubmissionPending(RuntimeError):
    """Another writer is creating this very batch right now; retry later."""


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
    """json.dumps(value, separators=(",", ":")).encode(): the bytes hashed since
    the first release (fastjson.canonical_bytes writes them, faster)."""
    return fastjson.canonical_bytes(value, ascii_only=True)


def requests_path(ledger_path: str, key: str) -> str:
    """Where the requests file of submission `key` is written (readers take
    the path its ledger entry recorded)."""
    return f"{ledger_path.rstrip('/')}/requests/{key}.json.zst"


# ---------------------------------------------------------------------------
# The requests file
#
# One JSON object, compressed with zstd, in columns (format 2): each field of
# Request and Item is one JSON array, so reading 100,000 requests parses a
# few dozen arrays of strings and numbers instead of 400,000 small objects
# (whose allocation alone set off the garbage collector's full passes over
# the whole heap), and the Requests are built with one map() per dataclass.

#: Layout version written by write_requests (the only one read).
_FORMAT = 2
#: zstd's magic number: the first bytes of a requests file.
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: Level 1: these files are written before each create (on the create
#: thread, while the next batch is built) and read once. On a 27,000-request file
#: (18 MB of JSON): 0.03 s and 4.1 MB, where gzip's level 1 took 0.19 s and
#: wrote 5.9 MB; reading back 0.02 s instead of 0.07 s.
_ZSTD_LEVEL = 1

_REQUEST_ORDER = [f.name for f in dataclasses.fields(Request)]
_REQUEST_FIELDS = [name for name in _REQUEST_ORDER if name != "items"]
_ITEM_ORDER = [f.name for f in dataclasses.fields(Item)]
_ITEM_FIELDS = [name for name in _ITEM_ORDER if name != "flags"]
_RECORD_FIELDS = [f.name for f in dataclasses.fields(Record)]
#: Defaults of fields added later: a file written before a field existed still reads.
_REQUEST_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Request) if f.default is not dataclasses.MISSING}
_ITEM_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Item) if f.default is not dataclasses.MISSING}


def _request_to_columns(requests: Sequence[Request]) -> Dict[str, Any]:
    """The requests-file body of `requests` (without records), as columns.

    Item flags are nearly always empty, so they are kept sparse:
    [[item index, [flag, ...]], ...] for the flagged items only.
    """
    items = [i for r in requests for i in r.items]
    request_columns = {name: list(map(operator.attrgetter(name), requests)) for name in _REQUEST_FIELDS}
    request_columns["item_count"] = [len(r.items) for r in requests]
    item_columns: Dict[str, Any] = {name: list(map(operator.attrgetter(name), items)) for name in _ITEM_FIELDS}
    item_columns["flags"] = [[n, list(i.flags)] for n, i in enumerate(items) if i.flags]
    return {"format": _FORMAT, "requests": request_columns, "items": item_columns}


def _request_from_columns(body: Dict[str, Any]) -> List[Request]:
    """The Requests of a format-2 body; ValueError when its columns disagree."""
    item_columns, request_columns = body["items"], body["requests"]
    counts = request_columns["item_count"]
    n_items = len(item_columns["record_id"])
    if sum(counts) != n_items:
        raise ValueError(f"requests file: {sum(counts)} items counted, {n_items} stored")
    flags = [()] * n_items
    for index, names in item_columns["flags"]:
        flags[index] = tuple(names)
    items = list(map(Item, *(flags if name == "flags" else _column(item_columns, name, n_items, _ITEM_DEFAULTS)
                             for name in _ITEM_ORDER)))
    grouped, start = [], 0
    for count in counts:
        grouped.append(tuple(items[start:start + count]))
        start += count
    return list(map(Request, *(grouped if name == "items"
                               else _column(request_columns, name, len(counts), _REQUEST_DEFAULTS)
                               for name in _REQUEST_ORDER)))


def _column(columns: Dict[str, list], name: str, length: int, defaults: Dict[str, Any]) -> list:
    """One column, checked for length; a field the file predates gets its default."""
    values = columns.get(name)
    if values is None and name in defaults:
        return [defaults[name]] * length
    if values is None or len(values) != length:
        raise ValueError(f"requests file: column {name!r} is missing or has the wrong length")
    return values


def write_requests(path: str, requests: Sequence[Request], records: Optional[Dict[str, Record]]) -> None:
    """The requests of one submission (and packed records), as zstd-compressed JSON."""
    # Requests hold only strings, ints and booleans: orjson writes them as
    # json would. Records' attrs may hold anything (floats, NaN, dates), so
    # they keep json's exact form.
    encoded = fastjson.dumps_bytes(_request_to_columns(requests), default=str)
    kept = _records_json(records) if records else b"null"
    # The records go in as one more member of the columns' object (whose last byte is "}").
    # The frame records its content size: a reader allocates the JSON's bytes once.
    body = encoded[:-1] + b',"records":' + kept + b"}"
    _write_file(path, zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(body))


def _records_json(records: Dict[str, Record]) -> bytes:
    """The packed records as JSON bytes (UTF-8).

    An attribute no prompt uses may hold bytes that were not UTF-8 (lone
    surrogates after surrogateescape): such a file is written with ASCII
    escapes ("\\udcff"), which json reads back to the very same string.
    """
    values = [{name: getattr(r, name) for name in _RECORD_FIELDS} for r in records.values()]
    text = json.dumps(values, ensure_ascii=False, default=str)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(values, ensure_ascii=True, default=str).encode("ascii")


def read_requests(path: str) -> Tuple[List[Request], Optional[Dict[str, Record]]]:
    """The requests (and packed records) of a file write_requests wrote."""
    data = _read_file(path)
    if data[:4] != _ZSTD_MAGIC:
        raise ValueError(f"requests file {path} is not a zstd frame (written by write_requests)")
    body = fastjson.loads(zstandard.ZstdDecompressor().decompress(data))
    version = body.get("format")
    if version != _FORMAT:
        raise ValueError(f"requests file {path} has format {version!r}; this release reads format {_FORMAT}")
    requests = _request_from_columns(body)
    records = None
    if body.get("records"):
        records = {d["record_id"]: Record(**{**d, "flags": tuple(d.get("flags") or ())})
                   for d in body["records"]}
    return requests, records


# A ledger lives on a local disk or on gs:// (ledger.open_ledger), and so do its
# requests files. Written by hand rather than with Beam's FileSystems, whose
# own credential lookup does not know the job's options; the ledger's own Cloud
# Storage client already knows the emulator and the default credentials.

def _write_file(path: str, data: bytes) -> None:
    """`data` at `path`, whole or not at all (a reader never sees part of it)."""
    if path.startswith("gs://"):
        _blob(path).upload_from_string(data)  # an object appears when its upload completes
        return
    path = _local(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    partial = f"{path}.partial-{os.getpid()}-{threading.get_ident()}"
    with open(partial, "wb") as f:
        f.write(data)
    os.replace(partial, path)


def _read_file(path: str) -> bytes:
    if path.startswith("gs://"):
        return _blob(path).download_as_bytes()
    with open(_local(path), "rb") as f:
        return f.read()


def _local(path: str) -> str:
    """A local path, from a plain path or a file:// URL (as ledger.open_ledger takes them)."""
    return urllib.parse.unquote(urllib.parse.urlparse(path).path) if path.startswith("file://") else path


def _blob(url: str):
    bucket, _, name = url[len("gs://"):].partition("/")
    # One client per process and emulator setting (a client per file costs an auth round).
    client = registry.per_process(("gcs-client", os.environ.get("STORAGE_EMULATOR_HOST")),
                                  ledger_mod.storage_client)
    return client.bucket(bucket).blob(name)


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
            # the ledger: the one case the ledger cannot cover, see the ledger package docstring.)
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
