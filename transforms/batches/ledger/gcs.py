"""``GcsLedger``: the ledger under ``gs://bucket/prefix``, for many machines.

Creation is an upload with ``if_generation_match=0`` and updates are uploads
with the generation read, so Cloud Storage arbitrates between any number of
writers; a write acknowledged late and retried is recognised by comparing
documents. Also :func:`storage_client` (a google-cloud-storage client that
needs no credentials under ``STORAGE_EMULATOR_HOST``), used by the requests
files too, and ``_parse_gs``.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import threading
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

from transforms.batches.ledger.base import _ATTEMPTS, DEFAULT_STALE_AFTER_S, Ledger, _check_key
from transforms.batches.ledger.entry import _KEY_RE, LedgerConflict, LedgerEntry, LedgerError

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
