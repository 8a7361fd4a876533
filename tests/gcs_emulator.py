"""A throwaway GCS emulator (PyPI ``gcp-storage-emulator``) for tests.

``GcsEmulator`` starts ``gcp-storage-emulator start --host=127.0.0.1 --port=P
--in-memory --default-bucket=BUCKET`` (the binary next to ``sys.executable``)
on a free loopback port, waits until the bucket answers and stops it at exit.

Finding (gcp-storage-emulator 2026.7.19): it IGNORES generation preconditions.
An upload with ``ifGenerationMatch=0`` over an existing object, or with a
wrong generation, succeeds (200) instead of failing with 412; downloads also
ignore ``generation=`` and send no ``x-goog-generation`` header. Code that
relies on preconditions (the batch ledger's create-if-absent and
compare-and-swap) is therefore not testable against the stock emulator.
:func:`honours_generation_preconditions` probes a running emulator for it.

``GcsEmulator(preconditions=True)`` runs the same emulator in a subprocess
with a thin layer (``python tests/gcs_emulator.py ...``) that enforces
``ifGenerationMatch`` / ``ifGenerationNotMatch`` on uploads, reads, patches and
deletes (412, as GCS does), honours ``generation=`` on downloads and sends
``x-goog-generation``. The emulator serves one request at a time, so each
check-then-write is atomic, like on GCS. This is a test double of GCS's
documented behaviour, not GCS itself.

Fixtures (import them into a test module to use them):

* ``gcs_emulator`` (session): the stock emulator; sets STORAGE_EMULATOR_HOST
  (and GOOGLE_CLOUD_PROJECT if unset) for the rest of the session.
* ``gcs_emulator_cas`` (session): the precondition-enforcing variant; does not
  touch the environment (point STORAGE_EMULATOR_HOST at ``.url`` yourself,
  e.g. with ``monkeypatch``).
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from typing import Iterator, Optional

import pytest

DEFAULT_BUCKET = "test-bucket"
#: Seconds to wait for a started emulator to serve its bucket.
START_TIMEOUT_S = 20.0


def emulator_binary() -> str:
    return os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bucket_answers(url: str, bucket: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/storage/v1/b/{bucket}", timeout=1) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


class GcsEmulator:
    """A gcp-storage-emulator subprocess on 127.0.0.1; use as a context manager."""

    def __init__(self, bucket: str = DEFAULT_BUCKET, preconditions: bool = False):
        self.bucket = bucket
        self.preconditions = preconditions
        self.port: Optional[int] = None
        self._proc: Optional[subprocess.Popen] = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _command(self, port: int):
        if self.preconditions:
            return [sys.executable, os.path.abspath(__file__), "--port", str(port), "--bucket", self.bucket]
        binary = emulator_binary()
        if not os.path.exists(binary):
            raise RuntimeError(f"{binary} not found: pip install gcp-storage-emulator in this venv")
        return [binary, "start", "--host=127.0.0.1", f"--port={port}", "--in-memory",
                f"--default-bucket={self.bucket}"]

    def start(self) -> "GcsEmulator":
        # the emulator logs every request: to a file, never to a pipe nobody reads
        self._log = tempfile.TemporaryFile()
        last = ""
        for _ in range(3):  # a free port can be taken between probe and bind
            port = _free_port()
            proc = subprocess.Popen(self._command(port), stdout=self._log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline and proc.poll() is None:
                if _bucket_answers(url, self.bucket):
                    self.port, self._proc = port, proc
                    return self
                time.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=5)
            self._log.seek(0)
            last = self._log.read().decode(errors="replace")[-2000:]
        self._log.close()
        raise RuntimeError(f"gcp-storage-emulator did not start: {last}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "GcsEmulator":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


@contextlib.contextmanager
def storage_emulator_env(url: str) -> Iterator[str]:
    """STORAGE_EMULATOR_HOST=url (and a GOOGLE_CLOUD_PROJECT if unset) inside the block."""
    saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT")}
    os.environ["STORAGE_EMULATOR_HOST"] = url
    os.environ.setdefault("GOOGLE_CLOUD_PROJECT", "local-project")
    try:
        yield url
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def emulator_client(url: str):
    """A storage client for the emulator at ``url`` (no credentials, no env needed)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(project="local-project", credentials=AnonymousCredentials(),
                          client_options={"api_endpoint": url})


def honours_generation_preconditions(url: str, bucket: str = DEFAULT_BUCKET) -> bool:
    """True iff the server answers 412 to both a create-if-absent over an
    existing object and an update with a wrong generation."""
    from google.api_core.exceptions import PreconditionFailed

    b = emulator_client(url).bucket(bucket)
    name = f"_probe/{uuid.uuid4().hex}"
    first = b.blob(name)
    first.upload_from_string(b"1", if_generation_match=0)
    verdicts = []
    for generation in (0, int(first.generation) + 12345):
        try:
            b.blob(name).upload_from_string(b"2", if_generation_match=generation)
            verdicts.append(False)
        except PreconditionFailed:
            verdicts.append(True)
    b.blob(name).delete()
    return all(verdicts)


@pytest.fixture(scope="session")
def gcs_emulator():
    """The stock emulator, with STORAGE_EMULATOR_HOST set for the session."""
    with GcsEmulator() as emu, storage_emulator_env(emu.url):
        yield emu


@pytest.fixture(scope="session")
def gcs_emulator_cas():
    """The emulator with generation preconditions enforced (see the module doc)."""
    with GcsEmulator(preconditions=True) as emu:
        yield emu


# --------------------------------------------------------------------------- the precondition layer

def _serve_with_preconditions(host: str, port: int, bucket: str) -> None:  # pragma: no cover - subprocess
    import http.server
    from http import HTTPStatus

    from gcp_storage_emulator import server as srv
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    http.server.HTTPServer.request_queue_size = 128  # many test threads connect at once

    def current(storage, bucket_name, name):
        try:
            return storage.get_file_obj(bucket_name, name)
        except NotFound:
            return None

    def refuse(response, message):
        response.status = HTTPStatus.PRECONDITION_FAILED
        response.json({"error": {"code": 412, "message": message,
                                 "errors": [{"reason": "conditionNotMet", "message": message}]}})

    def check(request, response, storage, name, create: bool) -> bool:
        if name is None:
            return True
        obj = current(storage, request.params["bucket_name"], name)
        if obj is None and not create:
            return True  # the handler answers 404
        generation = str(obj.get("generation")) if obj is not None else "0"
        q = request.query
        if "ifGenerationMatch" in q and q["ifGenerationMatch"][0] != generation:
            refuse(response, "At least one of the pre-conditions you specified did not hold.")
            return False
        if "ifGenerationNotMatch" in q and q["ifGenerationNotMatch"][0] == generation:
            refuse(response, "At least one of the pre-conditions you specified did not hold.")
            return False
        return True

    def upload_name(request):
        if "name" in request.query:
            return request.query["name"][0]
        data = request.data
        if isinstance(data, dict):
            meta = data.get("meta") if isinstance(data.get("meta"), dict) else data
            return meta.get("name")
        return None

    def wrap_insert(handler):
        def insert(request, response, storage, *args, **kwargs):
            if request.query.get("uploadType", [""])[0] in ("media", "multipart", "resumable") \
                    and "upload_id" not in request.query:
                if not check(request, response, storage, upload_name(request), create=True):
                    return None
            return handler(request, response, storage, *args, **kwargs)
        return insert

    def wrap_object(handler):
        def wrapped(request, response, storage, *args, **kwargs):
            if not check(request, response, storage, request.params["object_id"], create=False):
                return None
            return handler(request, response, storage, *args, **kwargs)
        return wrapped

    def wrap_download(handler):
        def download(request, response, storage, *args, **kwargs):
            name = request.params["object_id"]
            if not check(request, response, storage, name, create=False):
                return None
            obj = current(storage, request.params["bucket_name"], name)
            if obj is not None and "generation" in request.query \
                    and request.query["generation"][0] != str(obj.get("generation")):
                response.status = HTTPStatus.NOT_FOUND  # that generation is gone (no versioning)
                return None
            result = handler(request, response, storage, *args, **kwargs)
            if obj is not None and response.status == HTTPStatus.OK:
                response["x-goog-generation"] = str(obj.get("generation"))
                response["x-goog-metageneration"] = str(obj.get("metageneration"))
            return result
        return download

    replacements = {
        objects.insert: wrap_insert(objects.insert),
        objects.download: wrap_download(objects.download),
        objects.get: wrap_object(objects.get),
        objects.patch: wrap_object(objects.patch),
        objects.delete: wrap_object(objects.delete),
    }
    for _, handlers in srv.HANDLERS:
        for method, handler in list(handlers.items()):
            if handler in replacements:
                handlers[method] = replacements[handler]
    objects.insert = replacements[objects.insert]  # the router's upload fallback looks it up by name

    srv.create_server(host, port, in_memory=True, default_bucket=bucket).run()


if __name__ == "__main__":  # pragma: no cover - run as the emulator subprocess
    import argparse

    parser = argparse.ArgumentParser(description="gcp-storage-emulator with generation preconditions")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bucket", default=DEFAULT_BUCKET)
    args = parser.parse_args()
    _serve_with_preconditions(args.host, args.port, args.bucket)
