"""The ledger protocol, written once for every storage: the :class:`Ledger` ABC.

Reserving a submission (one winner per key), compare-and-swap updates,
touching, taking over stale or failed reservations, recording the batch id
(first recorded batch wins, :class:`DuplicateBatch` for the loser) and the
per-run manifests all live here; a backend implements only the seven storage
primitives at the end of the class (``_create``, ``_replace``, ``_read``,
``_iter`` and the three manifest ones). Also the small helpers the backends
share: key checking, manifest names, the retry bound and the default
staleness.
"""
from __future__ import annotations

import abc
import dataclasses
import datetime as dt
import json
import secrets
import urllib.parse
from typing import Any, Callable, Dict, FrozenSet, Iterable, Iterator, Mapping, Optional, Tuple, Union

from transforms.batches.ledger.entry import (CREATED, FAILED, RESERVED, STATES, TRANSITIONS, _KEY_RE,
                                             DuplicateBatch, LedgerConflict, LedgerEntry, _check_no_secrets,
                                             _parse_time, _rfc3339, _utcnow)

DEFAULT_STALE_AFTER_S = 15 * 60.0
_ATTEMPTS = 8
_UPDATABLE = frozenset({"state", "batch_id", "extra", "run_id", "owner", "request_count"})


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
