"""``LocalLedger``: the ledger in a local directory, for one machine.

Safe for any number of threads and processes on ONE machine with a local
POSIX file system: entries are created by ``os.link`` of a fully written,
fsynced temp file and replaced by ``os.replace`` under an ``fcntl.flock`` lock
stripe. Not a cross-machine lock (see the package docstring); use a ``gs://``
ledger for multi-worker jobs.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import uuid
from typing import Callable, Iterator, Optional, Union

try:  # POSIX only; LocalLedger refuses to start without it
    import fcntl
except ImportError:  # pragma: no cover - not on Linux
    fcntl = None  # type: ignore[assignment]

from transforms.batches.ledger.base import DEFAULT_STALE_AFTER_S, Ledger, _check_key
from transforms.batches.ledger.entry import _KEY_RE, LedgerConflict, LedgerEntry, LedgerError

class LocalLedger(Ledger):
    """A ledger in a local directory (created if missing). Safe for threads and
    processes on one machine; see the package docstring for what it is not."""

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
