"""The ledger's vocabulary: one submission's record and everything it depends on.

The states and their allowed transitions, the errors every backend raises,
the content hash that names a submission (:func:`digest_params`,
:func:`submission_key`), the check that refuses to write anything looking like
a credential, the RFC 3339 time helpers, and :class:`LedgerEntry` itself (its
validation and its JSON form). Pure: no storage, no I/O; the protocol lives in
``base.py`` and the storages in ``local.py`` and ``gcs.py``.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
from typing import Any, ClassVar, Dict, FrozenSet, Mapping, Optional, Sequence, Tuple, Union

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
