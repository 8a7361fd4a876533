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

import abc
import contextlib
import dataclasses
import datetime as dt
import errno
import hashlib
import json
import os
import re
import secrets
import threading
import urllib.parse
import uuid
from typing import (Any, Callable, ClassVar, Dict, FrozenSet, Iterable, Iterator, Mapping, Optional,
                    Sequence, Tuple, Union)

try:  # POSIX only; LocalLedger refuses to start without it
    import fcntl
except ImportError:  # pragma: no cover - not on Linux
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "RESERVED", "CREATED", "ENDED", "COLLECTED", "CANCELLED", "FAILED", "STATES", "TRANSITIONS",
    "DEFAULT_STALE_AFTER_S", "LedgerError", "LedgerConflict", "DuplicateBatch", "LedgerSecretError",
    "LedgerEntry", "Ledger", "LocalLedger", "GcsLedger", "open_ledger", "submission_key",
    "digest_params", "BatchMatch", "find_batch_by_first_custom_id", "storage_client",
]

RESERVED = "reserved"
CREATED = "created"
ENDED = "ended"
COLLECTED = "collected"
CANCELLED = "cancelled"
FAILED = "failed"
STATES: Tuple[str, ...] = (RESERVED, CREATED, ENDED, COLLECTED, CANCELLED, FAILED)

#: Allowed ``update`` transitions (same -> same is a touch). ``failed`` without a
#: batch_id goes back to ``reserved`` only through a takeover, and a batch found
#: after all (``record_batch``) may turn ``reserved``/``failed`` into ``created``.
TRANSITIONS: Mapping[str, FrozenSet[str]] = {
    RESERVED: frozenset({RESERVED, CREATED, FAILED}),
    CREATED: frozenset({CREATED, ENDED, CANCELLED, FAILED}),
    ENDED: frozenset({ENDED, COLLECTED, FAILED}),
    CANCELLED: frozenset({CANCELLED, ENDED, COLLECTED}),
    COLLECTED: frozenset({COLLECTED}),
    FAILED: frozenset({FAILED}),
}
_NEEDS_BATCH_ID = frozenset({CREATED, ENDED, COLLECTED})

DEFAULT_STALE_AFTER_S = 15 * 60.0
_ATTEMPTS = 8
_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
_UPDATABLE = frozenset({"state", "batch_id", "extra", "run_id", "owner", "request_count"})


class LedgerError(Exception):
    """The ledger could not do what was asked (storage problem, bad document)."""


class LedgerConflict(LedgerError):
    """A compare-and-swap lost: the entry changed since it was read."""


class DuplicateBatch(LedgerConflict):
    """``record_batch`` found ANOTHER batch already recorded for this submission.

    ``existing`` is the stored entry (its batch is the one the ledger keeps);
    ``batch_id`` is the caller's batch, which nobody will collect: cancel it.
    """

    def __init__(self, existing: "LedgerEntry", batch_id: str):
        super().__init__(f"submission {existing.key[:12]} already has batch {existing.batch_id}; "
                         f"batch {batch_id} is a duplicate and should be cancelled")
        self.existing = existing
        self.batch_id = batch_id


class LedgerSecretError(ValueError):
    """A value that looks like a credential was about to be written to the ledger."""


# --------------------------------------------------------------------------- hashing

def digest_params(params: Any) -> str:
    """sha256 hex of the canonical JSON of the shared request params (model,
    system, schema, max_tokens ...): the ``params_digest`` of :func:`submission_key`."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def submission_key(custom_ids: Sequence[str], params_digest: str) -> str:
    """Content hash (sha256 hex, 64 chars) of one submission: its custom_ids in
    order plus the digest of its request params. Pure; unambiguous (the parts
    are JSON-encoded, so no choice of ids can collide by concatenation)."""
    if isinstance(custom_ids, (str, bytes)):
        raise TypeError("custom_ids must be a sequence of strings, not a single string")
    ids = list(custom_ids)
    if not ids:
        raise ValueError("a submission has at least one custom_id")
    if not all(isinstance(c, str) and c for c in ids):
        raise TypeError("every custom_id must be a non-empty string")
    if not isinstance(params_digest, str) or not params_digest:
        raise TypeError("params_digest must be a non-empty string")
    text = json.dumps(["claude-batch-ledger/v1", params_digest, ids], separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


# --------------------------------------------------------------------------- secrets

_SECRET_KEYS = frozenset({
    "authorization", "proxyauthorization", "apikey", "xapikey", "anthropicapikey", "password", "passwd",
    "secret", "clientsecret", "accesstoken", "refreshtoken", "idtoken", "privatekey", "cookie", "setcookie",
    "bearer", "credentials",
})
_SECRET_VALUES = (
    re.compile(r"sk-ant-", re.I),                                   # Anthropic API keys
    re.compile(r"\b(?:proxy-)?authorization\s*:", re.I),           # a header line
    re.compile(r"^\s*bearer\s+\S", re.I),                           # a header value
    re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.I),   # a URL with user:password
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
)


def _check_no_secrets(value: Any, where: str) -> None:
    if isinstance(value, str):
        for pattern in _SECRET_VALUES:
            if pattern.search(value):
                raise LedgerSecretError(f"{where} looks like a credential; the ledger never stores secrets")
    elif isinstance(value, Mapping):
        for k, v in value.items():
            name = re.sub(r"[^a-z0-9]", "", str(k).lower())
            if name in _SECRET_KEYS:
                raise LedgerSecretError(f"{where}.{k}: a credential field; the ledger never stores secrets")
            _check_no_secrets(str(k), f"{where} (a key)")
            _check_no_secrets(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_no_secrets(v, f"{where}[{i}]")


# --------------------------------------------------------------------------- time

def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _rfc3339(t: dt.datetime) -> str:
    if t.tzinfo is None:
        raise ValueError("ledger clocks must return timezone-aware datetimes")
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(s: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    if t.tzinfo is None:
        raise ValueError(f"timestamp without a time zone: {s!r}")
    return t


# --------------------------------------------------------------------------- entry

@dataclasses.dataclass(frozen=True)
class LedgerEntry:
    """One submission's record. Immutable: ``Ledger.update`` returns a new one.

    ``revision`` counts writes; ``takeovers`` counts stale takeovers (each one
    is a moment where a batch may have been created twice: audit them).
    ``generation`` is storage metadata (the GCS object generation the entry was
    read at), used for compare-and-swap and never serialized.
    """

    key: str
    state: str
    run_id: str
    request_count: int
    owner: str
    created_at: str
    updated_at: str
    batch_id: Optional[str] = None
    revision: int = 0
    takeovers: int = 0
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    generation: Optional[int] = dataclasses.field(default=None, compare=False, repr=False)

    #: The fields written to storage, and the only ones.
    SERIALIZED_FIELDS: ClassVar[Tuple[str, ...]] = (
        "key", "state", "batch_id", "run_id", "created_at", "updated_at", "request_count", "owner",
        "revision", "takeovers", "extra")

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not _KEY_RE.match(self.key):
            raise ValueError(f"ledger key must be 64 lowercase hex chars, got {self.key!r}")
        if self.state not in STATES:
            raise ValueError(f"unknown ledger state {self.state!r}; one of {STATES}")
        if not isinstance(self.run_id, str) or not self.run_id or len(self.run_id) > 1024:
            raise ValueError("run_id must be a non-empty string (at most 1024 chars)")
        for name in ("request_count", "revision", "takeovers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        if not isinstance(self.owner, str) or not self.owner:
            raise ValueError("owner must be a non-empty string")
        if self.batch_id is not None and (not isinstance(self.batch_id, str) or not self.batch_id):
            raise ValueError("batch_id must be None or a non-empty string")
        if self.state in _NEEDS_BATCH_ID and self.batch_id is None:
            raise ValueError(f"state {self.state!r} needs a batch_id")
        for name in ("created_at", "updated_at"):
            _parse_time(getattr(self, name))
        if not isinstance(self.extra, Mapping):
            raise ValueError("extra must be a mapping")
        # a private, JSON-clean copy: no aliasing with the caller's dict, no odd types
        object.__setattr__(self, "extra", json.loads(json.dumps(dict(self.extra), allow_nan=False)))
        _check_no_secrets({f: getattr(self, f) for f in self.SERIALIZED_FIELDS}, "ledger entry")

    def to_dict(self) -> Dict[str, Any]:
        return {f: (dict(self.extra) if f == "extra" else getattr(self, f)) for f in self.SERIALIZED_FIELDS}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], generation: Optional[int] = None) -> "LedgerEntry":
        unknown = set(data) - set(cls.SERIALIZED_FIELDS)
        if unknown:
            raise LedgerError(f"ledger document has unknown fields {sorted(unknown)}")
        fields = {f: data[f] for f in cls.SERIALIZED_FIELDS if f in data}
        return cls(generation=generation, **fields)

    @classmethod
    def from_json(cls, text: Union[str, bytes], generation: Optional[int] = None) -> "LedgerEntry":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise LedgerError(f"unreadable ledger document: {e}") from None
        if not isinstance(data, dict):
            raise LedgerError("a ledger document is a JSON object")
        return cls.from_dict(data, generation)

    def same_document(self, other: Optional["LedgerEntry"]) -> bool:
        return other is not None and self.to_dict() == other.to_dict()


# --------------------------------------------------------------------------- interface

def _check_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise ValueError(f"ledger key must be a submission_key() (64 hex chars), got {key!r}")
    return key


def _manifest_name(run_id: str) -> str:
    """A reversible, path-safe file name for a run id (no '/', no leading dot)."""
    if not isinstance(run_id, str) or not run_id:
        raise ValueError("run_id must be a non-empty string")
    name = urllib.parse.quote(run_id, safe="-_").replace(".", "%2E").replace("~", "%7E")
    if len(name) > 200:
        raise ValueError("run_id too long for a manifest name")
    return name


def _states(states: Union[None, str, Iterable[str]]) -> Optional[FrozenSet[str]]:
    if states is None:
        return None
    wanted = frozenset([states] if isinstance(states, str) else states)
    bad = wanted - set(STATES)
    if bad:
        raise ValueError(f"unknown ledger states {sorted(bad)}")
    return wanted


class Ledger(abc.ABC):
    """The batch ledger. Backends implement five storage primitives; the
    protocol (reserve, CAS update, takeover, duplicates) lives here, once."""

    def __init__(self, *, stale_after_s: float = DEFAULT_STALE_AFTER_S,
                 clock: Optional[Callable[[], dt.datetime]] = None):
        if stale_after_s <= 0:
            raise ValueError("stale_after_s must be > 0")
        self.stale_after_s = float(stale_after_s)
        self._clock = clock or _utcnow

    # ---- identity
    @property
    @abc.abstractmethod
    def url(self) -> str:
        """Where the ledger lives (a directory or gs://bucket/prefix)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def _now(self) -> dt.datetime:
        return self._clock()

    # ---- queries
    def get(self, key: str) -> Optional[LedgerEntry]:
        return self._read(_check_key(key))

    def list(self, run_id: Optional[str] = None,
             states: Union[None, str, Iterable[str]] = None) -> Iterator[LedgerEntry]:
        """Entries (a stream, in no particular order), optionally only those of a
        run and/or in some states. Entries that change while the listing runs
        may appear in their old or new state, or (after a state change that
        leaves the filter) not at all."""
        wanted = _states(states)
        for entry in self._iter(run_id, wanted):
            if run_id is not None and entry.run_id != run_id:
                continue
            if wanted is not None and entry.state not in wanted:
                continue
            yield entry

    def is_stale(self, entry: LedgerEntry, now: Optional[dt.datetime] = None) -> bool:
        """A reservation without batch_id untouched for more than stale_after_s."""
        if entry.state != RESERVED or entry.batch_id is not None:
            return False
        age = ((now or self._now()) - _parse_time(entry.updated_at)).total_seconds()
        return age > self.stale_after_s

    def can_take_over(self, entry: LedgerEntry, now: Optional[dt.datetime] = None) -> bool:
        """Stale reservations, and ``failed`` entries that never got a batch
        (the create was refused: trying again pays nothing twice)."""
        if entry.state == FAILED and entry.batch_id is None:
            return True
        return self.is_stale(entry, now)

    # ---- writes
    def reserve(self, key: str, run_id: str, request_count: int, *,
                extra: Optional[Mapping[str, Any]] = None) -> Tuple[LedgerEntry, bool]:
        """Record a submission before ``batches.create``.

        Returns ``(entry, True)`` when this call owns the submission (created
        the entry, or took over a stale/failed one) and must create the batch;
        ``(stored entry, False)`` otherwise. For one key exactly one concurrent
        caller gets True.
        """
        _check_key(key)
        for _ in range(_ATTEMPTS):
            now = _rfc3339(self._now())
            mine = LedgerEntry(key=key, state=RESERVED, run_id=run_id, request_count=request_count,
                               owner=secrets.token_hex(16), created_at=now, updated_at=now,
                               extra=dict(extra or {}))
            stored = self._create(mine)
            if stored is not None:
                return stored, True
            current = self._read(key)
            if current is None:
                continue  # removed between our create and our read (by hand): try again
            if self.can_take_over(current):
                try:
                    return self.take_over(current, run_id=run_id), True
                except LedgerConflict:
                    continue  # somebody else moved it first: look again
            return current, False
        raise LedgerConflict(f"could not reserve {key[:12]} after {_ATTEMPTS} attempts")

    def update(self, entry: LedgerEntry, **changes: Any) -> LedgerEntry:
        """Compare-and-swap: write ``entry`` with ``changes`` if the stored
        document is still exactly ``entry``; else raise LedgerConflict.

        Changeable: state, batch_id (only while unset), extra (replaced whole),
        run_id, owner, request_count. ``updated_at`` and ``revision`` advance.
        """
        unknown = set(changes) - _UPDATABLE
        if unknown:
            raise TypeError(f"cannot update {sorted(unknown)}; updatable: {sorted(_UPDATABLE)}")
        new_state = changes.get("state", entry.state)
        if new_state not in STATES:
            raise ValueError(f"unknown ledger state {new_state!r}")
        if new_state not in TRANSITIONS[entry.state]:
            raise ValueError(f"illegal ledger transition {entry.state} -> {new_state}")
        return self._write_changes(entry, changes)

    def touch(self, entry: LedgerEntry) -> LedgerEntry:
        """Refresh ``updated_at`` (CAS). Call before every ``batches.create``
        attempt: a LedgerConflict means the reservation is no longer yours."""
        return self._write_changes(entry, {})

    def take_over(self, entry: LedgerEntry, run_id: Optional[str] = None) -> LedgerEntry:
        """Take a stale reservation (or a failed, batch-less entry) for a new
        owner, by CAS. Raises LedgerConflict if it is not takeable or if
        another writer changed it first."""
        if not self.can_take_over(entry):
            raise LedgerConflict(f"entry {entry.key[:12]} ({entry.state}) is not stale")
        return self._write_changes(entry, {
            "state": RESERVED, "owner": secrets.token_hex(16), "run_id": run_id or entry.run_id,
            "takeovers": entry.takeovers + 1})

    def record_batch(self, entry: LedgerEntry, batch_id: str, *,
                     extra: Optional[Mapping[str, Any]] = None) -> LedgerEntry:
        """After ``batches.create``: record ``batch_id`` (state ``created``).

        If the reservation was taken over meanwhile but the new owner has not
        recorded a batch yet, ours is recorded (the first batch recorded wins;
        the other owner's next touch/record fails). If another batch is already
        recorded, raises :class:`DuplicateBatch`: cancel ``batch_id``.
        Idempotent for the same batch_id.
        """
        if not isinstance(batch_id, str) or not batch_id:
            raise ValueError("batch_id must be a non-empty string")
        current: Optional[LedgerEntry] = entry
        for _ in range(_ATTEMPTS):
            if current is None:
                raise LedgerConflict(f"entry {entry.key[:12]} disappeared")
            if current.batch_id == batch_id:
                return current
            if current.batch_id is not None:
                raise DuplicateBatch(current, batch_id)
            changes: Dict[str, Any] = {"state": CREATED, "batch_id": batch_id, "owner": entry.owner}
            if extra is not None:
                changes["extra"] = dict(extra)
            try:
                return self._write_changes(current, changes)
            except LedgerConflict:
                current = self._read(entry.key)
        raise LedgerConflict(f"could not record batch {batch_id} after {_ATTEMPTS} attempts")

    def _write_changes(self, entry: LedgerEntry, changes: Mapping[str, Any]) -> LedgerEntry:
        if "batch_id" in changes and entry.batch_id is not None and changes["batch_id"] != entry.batch_id:
            raise ValueError(f"entry {entry.key[:12]} already has batch {entry.batch_id}; a batch_id never changes")
        new = dataclasses.replace(entry, **changes, updated_at=_rfc3339(self._now()),
                                  revision=entry.revision + 1, generation=None)
        return self._replace(new, entry)

    # ---- manifests
    def write_manifest(self, run_id: str, data: Mapping[str, Any]) -> None:
        """Store the run's manifest (a JSON object; last writer wins, atomically)."""
        if not isinstance(data, Mapping):
            raise TypeError("a manifest is a JSON object (a mapping)")
        _check_no_secrets(dict(data), "manifest")
        body = json.dumps(dict(data), sort_keys=True, ensure_ascii=False, allow_nan=False).encode("utf-8")
        self._put_manifest(_manifest_name(run_id), body)

    def read_manifest(self, run_id: str) -> Optional[Dict[str, Any]]:
        body = self._get_manifest(_manifest_name(run_id))
        return None if body is None else json.loads(body)

    def manifests(self) -> Iterator[str]:
        """Run ids that have a manifest."""
        for name in self._manifest_names():
            yield urllib.parse.unquote(name)

    # ---- backend primitives
    @abc.abstractmethod
    def _create(self, entry: LedgerEntry) -> Optional[LedgerEntry]:
        """Store ``entry`` iff no entry has its key (atomically); the stored
        entry, or None when one already exists."""

    @abc.abstractmethod
    def _replace(self, new: LedgerEntry, expected: LedgerEntry) -> LedgerEntry:
        """Store ``new`` iff the stored document equals ``expected``; else LedgerConflict."""

    @abc.abstractmethod
    def _read(self, key: str) -> Optional[LedgerEntry]:
        ...

    @abc.abstractmethod
    def _iter(self, run_id: Optional[str], states: Optional[FrozenSet[str]]) -> Iterator[LedgerEntry]:
        """All entries (may pre-filter; the caller filters again)."""

    @abc.abstractmethod
    def _put_manifest(self, name: str, body: bytes) -> None:
        ...

    @abc.abstractmethod
    def _get_manifest(self, name: str) -> Optional[bytes]:
        ...

    @abc.abstractmethod
    def _manifest_names(self) -> Iterator[str]:
        ...


# --------------------------------------------------------------------------- local

class LocalLedger(Ledger):
    """A ledger in a local directory (created if missing). Safe for threads and
    processes on one machine; see the module docstring for what it is not."""

    LOCK_STRIPES = 256

    def __init__(self, directory: Union[str, os.PathLike], *, stale_after_s: float = DEFAULT_STALE_AFTER_S,
                 clock: Optional[Callable[[], dt.datetime]] = None, fsync: bool = True):
        super().__init__(stale_after_s=stale_after_s, clock=clock)
        if fcntl is None:  # pragma: no cover
            raise LedgerError("LocalLedger needs POSIX fcntl.flock; use a gs:// ledger on this platform")
        self.directory = os.path.abspath(os.path.expanduser(os.fspath(directory)))
        self.fsync = fsync
        self._entries = os.path.join(self.directory, "entries")
        self._manifests = os.path.join(self.directory, "manifests")
        self._locks = os.path.join(self.directory, "locks")
        for d in (self._entries, self._manifests, self._locks):
            os.makedirs(d, exist_ok=True)

    @property
    def url(self) -> str:
        return self.directory

    def entry_path(self, key: str) -> str:
        return os.path.join(self._entries, _check_key(key) + ".json")

    @contextlib.contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        stripe = int(key[:4], 16) % self.LOCK_STRIPES
        fd = os.open(os.path.join(self._locks, f"{stripe:03d}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _write_temp(self, directory: str, body: bytes) -> str:
        tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view):]
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        return tmp

    def _sync_dir(self, directory: str) -> None:
        if not self.fsync:
            return
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _create(self, entry: LedgerEntry) -> Optional[LedgerEntry]:
        path = self.entry_path(entry.key)
        if os.path.exists(path):
            return None
        with self._lock(entry.key):
            tmp = self._write_temp(self._entries, entry.to_json().encode("utf-8"))
            try:
                try:
                    os.link(tmp, path)  # atomic; fails if the name exists, even without our lock
                except FileExistsError:
                    return None
                except OSError as e:  # a file system without hard links: we hold the lock
                    if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
                        raise
                    if os.path.exists(path):
                        return None
                    os.replace(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            self._sync_dir(self._entries)
        return entry

    def _replace(self, new: LedgerEntry, expected: LedgerEntry) -> LedgerEntry:
        path = self.entry_path(new.key)
        with self._lock(new.key):
            if not expected.same_document(self._read(new.key)):
                raise LedgerConflict(f"entry {new.key[:12]} changed since it was read")
            tmp = self._write_temp(self._entries, new.to_json().encode("utf-8"))
            try:
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            self._sync_dir(self._entries)
        return new

    def _read(self, key: str) -> Optional[LedgerEntry]:
        try:
            with open(self.entry_path(key), "rb") as f:
                body = f.read()
        except FileNotFoundError:
            return None
        return LedgerEntry.from_json(body)

    def _iter(self, run_id, states) -> Iterator[LedgerEntry]:
        with os.scandir(self._entries) as it:
            for dirent in it:
                name = dirent.name
                if not name.endswith(".json") or not _KEY_RE.match(name[:-5]):
                    continue  # temp files (".tmp-...") and strays
                entry = self._read(name[:-5])
                if entry is not None:
                    yield entry

    def _put_manifest(self, name: str, body: bytes) -> None:
        tmp = self._write_temp(self._manifests, body)
        try:
            os.replace(tmp, os.path.join(self._manifests, name + ".json"))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._sync_dir(self._manifests)

    def _get_manifest(self, name: str) -> Optional[bytes]:
        try:
            with open(os.path.join(self._manifests, name + ".json"), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def _manifest_names(self) -> Iterator[str]:
        with os.scandir(self._manifests) as it:
            for dirent in it:
                if dirent.name.endswith(".json") and not dirent.name.startswith("."):
                    yield dirent.name[:-5]


# --------------------------------------------------------------------------- GCS

def storage_client(project: Optional[str] = None):
    """A google-cloud-storage client. With STORAGE_EMULATOR_HOST set the library
    itself points at the emulator; we add anonymous credentials and a project
    so that no GCP credentials are needed (or looked for)."""
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=project or os.environ.get("GOOGLE_CLOUD_PROJECT") or "local-project",
                              credentials=AnonymousCredentials())
    return storage.Client(project=project)


def _parse_gs(url: str) -> Tuple[str, str]:
    if not url.startswith("gs://"):
        raise ValueError(f"not a gs:// URL: {url!r}")
    bucket, _, prefix = url[len("gs://"):].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {url!r}")
    prefix = prefix.strip("/")
    return bucket, (prefix + "/" if prefix else "")


class GcsLedger(Ledger):
    """A ledger under ``gs://bucket/prefix``: generation preconditions make it
    safe for any number of writers on any number of machines (on real GCS).

    Picklable (for Beam DoFns): the client is made lazily, one per thread.
    """

    PAGE_SIZE = 1000

    def __init__(self, url: str, *, client: Any = None, project: Optional[str] = None,
                 stale_after_s: float = DEFAULT_STALE_AFTER_S, clock: Optional[Callable[[], dt.datetime]] = None):
        super().__init__(stale_after_s=stale_after_s, clock=clock)
        self.bucket_name, self.prefix = _parse_gs(url)
        self.project = project
        self._client_override = client
        self._local = threading.local()

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_client_override"] = None
        state["_local"] = None
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    @property
    def url(self) -> str:
        return f"gs://{self.bucket_name}/{self.prefix}".rstrip("/")

    def client(self):
        if self._client_override is not None:
            return self._client_override
        c = getattr(self._local, "client", None)
        if c is None:
            c = self._local.client = storage_client(self.project)
        return c

    def _bucket(self):
        return self.client().bucket(self.bucket_name)

    def object_name(self, key: str) -> str:
        return f"{self.prefix}entries/{_check_key(key)}.json"

    @staticmethod
    def _errors():
        from google.api_core import exceptions

        return exceptions.NotFound, exceptions.PreconditionFailed

    @staticmethod
    def _metadata(entry: LedgerEntry) -> Dict[str, str]:
        md = {"state": entry.state}
        if entry.run_id.isascii() and entry.run_id.isprintable() and len(entry.run_id) <= 512:
            md["run_id"] = entry.run_id
        return md

    def _upload(self, entry: LedgerEntry, if_generation_match: int) -> LedgerEntry:
        blob = self._bucket().blob(self.object_name(entry.key))
        blob.metadata = self._metadata(entry)
        blob.upload_from_string(entry.to_json().encode("utf-8"), content_type="application/json",
                                if_generation_match=if_generation_match)
        return dataclasses.replace(entry, generation=int(blob.generation) if blob.generation else None)

    def _create(self, entry: LedgerEntry) -> Optional[LedgerEntry]:
        _, precondition_failed = self._errors()
        try:
            return self._upload(entry, if_generation_match=0)
        except precondition_failed:
            current = self._read(entry.key)
            if entry.same_document(current):  # our own write, acknowledged late and retried
                return current
            return None

    def _replace(self, new: LedgerEntry, expected: LedgerEntry) -> LedgerEntry:
        if expected.generation is None:
            raise ValueError("entry has no GCS generation: update entries read from this ledger")
        _, precondition_failed = self._errors()
        try:
            return self._upload(new, if_generation_match=expected.generation)
        except precondition_failed:
            current = self._read(new.key)
            if new.same_document(current):  # our own write, acknowledged late and retried
                return current
            raise LedgerConflict(f"entry {new.key[:12]} changed since it was read") from None

    def _read_object(self, name: str) -> Optional[Tuple[bytes, int]]:
        """Content and the generation it belongs to (never a mix of two writes)."""
        not_found, precondition_failed = self._errors()
        bucket = self._bucket()
        for _ in range(_ATTEMPTS):
            blob = bucket.blob(name)
            try:
                body = blob.download_as_bytes()
            except not_found:
                return None
            if blob.generation:  # GCS sends x-goog-generation with the content
                return body, int(blob.generation)
            # no generation header (the emulator): metadata first, then that generation's content
            meta = bucket.get_blob(name)
            if meta is None:
                return None
            generation = int(meta.generation)
            try:  # a fresh blob: the library builds the URL (the emulator's mediaLink is not URL-encoded)
                body = bucket.blob(name, generation=generation).download_as_bytes(if_generation_match=generation)
            except (not_found, precondition_failed):
                continue  # overwritten in between: read again
            return body, generation
        raise LedgerError(f"{name} keeps changing; could not read it")

    def _read(self, key: str) -> Optional[LedgerEntry]:
        got = self._read_object(self.object_name(key))
        return None if got is None else LedgerEntry.from_json(got[0], generation=got[1])

    def _iter(self, run_id, states) -> Iterator[LedgerEntry]:
        prefix = f"{self.prefix}entries/"
        for blob in self.client().list_blobs(self.bucket_name, prefix=prefix, page_size=self.PAGE_SIZE):
            rest = blob.name[len(prefix):]
            if not rest.endswith(".json") or not _KEY_RE.match(rest[:-5]):
                continue
            md = blob.metadata or {}
            if run_id is not None and "run_id" in md and md["run_id"] != run_id:
                continue
            if states is not None and "state" in md and md["state"] not in states:
                continue
            entry = self._read(rest[:-5])
            if entry is not None:
                yield entry

    def _put_manifest(self, name: str, body: bytes) -> None:
        blob = self._bucket().blob(f"{self.prefix}manifests/{name}.json")
        blob.upload_from_string(body, content_type="application/json")

    def _get_manifest(self, name: str) -> Optional[bytes]:
        got = self._read_object(f"{self.prefix}manifests/{name}.json")
        return None if got is None else got[0]

    def _manifest_names(self) -> Iterator[str]:
        prefix = f"{self.prefix}manifests/"
        for blob in self.client().list_blobs(self.bucket_name, prefix=prefix, page_size=self.PAGE_SIZE):
            rest = blob.name[len(prefix):]
            if rest.endswith(".json") and "/" not in rest:
                yield rest[:-5]


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


# --------------------------------------------------------------------------- orphans

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
