"""The batch route's API calls, made by a helper process that owns the SDK client.

Why a process: a batch job's own process is busy on one core from its first
bundle to its last (reading, screening, building requests, collecting
results). Importing the ``anthropic`` SDK cost it ~1.5 s, and the thread that
encoded and streamed each 256 MB create body took another ~0.3 s of its GIL
per batch. The helper does both on the machine's other core: it imports the
SDK while the job imports Beam, opens the sealed requests, writes and sends
the body, and reads the results file; the job's process only passes bytes
and never imports the SDK (tests/test_api_process.py checks that).

One helper per job process, started on first use (or at once by
``pipeline/__main__.py`` when the command line names a batch mode), shared by
every DoFn and thread of the process; calls are made one at a time. Each call
carries its settings and the API key (read by the job, from its environment
or Secret Manager): over a socketpair private to the two processes, never an
argument, a file or a log line. Retries (tenacity, ``RetryPolicy``) run in the helper; a failure
comes back as a :class:`~transforms.retry.RemoteError` holding the decision
``retry.classify`` made on the SDK's exception. If the helper dies, the call
raises :class:`ApiProcessError` (the bundle fails and is retried) and the
next call starts a new one.

A create's sealed requests (tens of MB) go through a temporary file rather
than the socket: written with one system call, where a socket takes them in
~200 KB pieces and the sending thread waits for the GIL after each one.
"""
from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime as dt
import functools
import logging
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Dict, Iterator, Optional, Sequence, Tuple

import transforms
from transforms import registry
from transforms.client import ApiSettings, RetryPolicy, describe_error, shared_client
from transforms.requests import RequestBuilder, requests_of
from transforms.retry import RemoteError, classify

if TYPE_CHECKING:
    from transforms.lifecycle import LedgerSettings

__all__ = ["ApiProcess", "ApiProcessError", "BatchCalls", "BatchState", "Created", "shared", "prestart",
           "needs_api_process", "wire_schema"]

_LOG = logging.getLogger(__name__)
#: Bytes per results chunk handed to the job: large enough that per-chunk
#: costs (a pickle, a message) vanish, small next to a worker's memory.
RESULTS_CHUNK_BYTES = 256 * 1024
#: Modes whose API calls go through the helper (the Message Batches route).
BATCH_MODES = ("batch", "packed-batch", "auto")
#: The environment the helper's clients read (Cloud Storage for a gs:// ledger,
#: proxies, CA bundles): sent with every call, so that the helper works with the
#: job's values as they are at the call, not as they were when it started.
CLIENT_ENV = ("STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT", "GOOGLE_APPLICATION_CREDENTIALS",
              "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy",
              "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE")
#: How long a closing job waits for its helper to leave before killing it.
_EXIT_WAIT_S = 2.0
_OK, _ERR, _CHUNK, _END = "ok", "err", "chunk", "end"
#: True in the helper itself: there, the SDK is at hand, and a call "to the
#: helper" would start a helper of the helper (importing the SDK once more on
#: the core the job is waiting for).
_SERVING = False


#: The process's helpers, by role: CALLS makes the job's API calls; COLLECT
#: collects some of a bundle's batches while the job collects the others
#: (batch_api._CollectBatches), on a machine with a core to spare.
CALLS, COLLECT = "calls", "collect"


class ApiProcessError(RuntimeError):
    """The helper process is gone (crashed, killed) or its answer is unreadable."""


@dataclasses.dataclass(frozen=True)
class Created:
    """A batch the API accepted: its id and how many records its requests hold."""

    id: str
    items: int


@dataclasses.dataclass(frozen=True)
class BatchState:
    """What the job reads from a retrieved batch (the SDK's object stays in the helper)."""

    id: str
    processing_status: str
    ended_at: Optional[dt.datetime]


class ApiProcess:
    """The job's side of the helper: starts it, sends calls, reads answers."""

    def __init__(self, role: str = CALLS):
        self._role = role
        self._lock = threading.Lock()
        self._owner: Optional[int] = None  # the thread in a call: a nested call would deadlock
        self._proc: Optional[subprocess.Popen] = None
        self._conn: Optional[Connection] = None
        self._pid = 0
        self._start()
        atexit.register(self.close)

    def _start(self) -> None:
        parent, child = _socketpair()
        root = os.path.dirname(os.path.dirname(os.path.abspath(transforms.__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        self._proc = subprocess.Popen(
            [sys.executable, "-c", f"from transforms.api_process import serve; serve({child}, {self._role!r})"],
            pass_fds=(child,), env=env, stdin=subprocess.DEVNULL)
        os.close(child)
        self._conn = Connection(parent)
        self._pid = os.getpid()

    def close(self) -> None:
        """Close the socket (the helper leaves on its end of file) and reap the helper."""
        conn, proc, self._conn, self._proc = self._conn, self._proc, None, None
        if conn is None or self._pid != os.getpid():
            return
        conn.close()
        try:
            proc.wait(_EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def call(self, op: str, *args: Any) -> Any:
        """The value of `op` in the helper; raises what it raised there (a RemoteError)."""
        with self._turn():
            self._send(op, args)
            kind, value = self._receive()
        if kind == _ERR:
            raise value
        return value

    def stream(self, op: str, *args: Any) -> Iterator[bytes]:
        """The chunks `op` yields in the helper, as they come. The helper is this
        caller's until the stream ends; one left unfinished is read to its end."""
        with self._turn():
            self._send(op, args)
            finished = False
            try:
                while True:
                    kind, value = self._receive()
                    if kind == _CHUNK:
                        yield value
                        continue
                    finished = True
                    if kind == _ERR:
                        raise value
                    return
            finally:
                if not finished:
                    self._drain()

    def _drain(self) -> None:
        try:
            while self._receive()[0] == _CHUNK:
                pass
        except ApiProcessError:
            pass  # already marked dead: the next call starts a new helper

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """Holds the helper for one call; starts a new helper if the last one died."""
        me = threading.get_ident()
        if self._owner == me:
            raise RuntimeError("a call to the API process was made while this thread was still "
                               "reading the answer of another (finish or close that stream first)")
        with self._lock:
            self._ensure_running()
            self._owner = me
            try:
                yield
            finally:
                self._owner = None

    def _send(self, op: str, args: Tuple[Any, ...]) -> None:
        try:
            env = {name: os.environ.get(name) for name in CLIENT_ENV}
            self._conn.send_bytes(pickle.dumps((op, args, env), pickle.HIGHEST_PROTOCOL))
        except (OSError, EOFError) as e:
            raise self._died(e) from e

    def _receive(self) -> Tuple[str, Any]:
        try:
            return pickle.loads(self._conn.recv_bytes())
        except (OSError, EOFError) as e:
            raise self._died(e) from e

    def _died(self, cause: BaseException) -> ApiProcessError:
        proc = self._proc
        code = proc.poll() if proc is not None else None
        self.close()
        return ApiProcessError(f"the API process stopped (exit code {code}; {type(cause).__name__}); "
                               "the next call starts a new one")

    def _ensure_running(self) -> None:
        if self._pid != os.getpid():
            # A forked copy of this object: the socket is the parent's, never to be touched.
            self._conn = self._proc = None
        if self._conn is None:
            self._start()


def _socketpair() -> Tuple[int, int]:
    import socket
    a, b = socket.socketpair()
    for end in (a, b):
        # Blocking whatever socket.setdefaulttimeout() says (Beam's GCS code sets
        # one): a detached socket in timeout mode is non-blocking, and the
        # Connections read it with plain os.read.
        end.setblocking(True)
    os.set_inheritable(b.fileno(), True)
    return a.detach(), b.detach()


def shared(role: str = CALLS) -> ApiProcess:
    """The process's helper for `role`, started on first use."""
    return registry.per_process(("api-process", role), lambda: ApiProcess(role))


def can_collect_beside() -> bool:
    """True when a collect process would have a core of its own to work on."""
    return (os.cpu_count() or 1) >= 2


def needs_api_process(argv: Sequence[str]) -> bool:
    """True when `python -m pipeline ARGV` runs a job in a batch mode (the default)."""
    args = list(argv)
    if not args or args[0] == "plan" or "-h" in args or "--help" in args:
        return False
    mode = "batch"  # the default of --mode
    for n, arg in enumerate(args):
        if arg == "--mode" and n + 1 < len(args):
            mode = args[n + 1]
        elif arg.startswith("--mode="):
            mode = arg.split("=", 1)[1]
    return mode in BATCH_MODES


def prestart(argv: Sequence[str]) -> None:
    """Start the API process now if this command line runs a batch-mode job, so
    that its SDK import overlaps the job's own start-up (Beam's import, the graph).
    (The collect process starts later, see batch_api._CreateBatches.setup.)"""
    if needs_api_process(argv):
        shared()


@dataclasses.dataclass(frozen=True)
class BatchCalls:
    """The Message Batches calls a DoFn makes, through the process's helper.
    Settings only: safe to pickle with the DoFn.

    In a helper itself (the collect process collecting a batch) the calls are
    made right there, with the key the helper was handed (`given_key`)."""

    api: ApiSettings
    retry: RetryPolicy
    given_key: Optional[str] = dataclasses.field(default=None, repr=False, compare=False)

    def _key(self) -> str:
        if self.given_key is not None:
            return self.given_key
        # Read here, where a scheduler or a test set it; a Secret Manager
        # version once per process (as the client of shared_client held it).
        if self.api.api_key_secret:
            return registry.per_process(("api-key", self.api.api_key_secret), self.api.api_key)
        return self.api.api_key()

    def check_key(self) -> None:
        """Raise now, with the reason, if there is no key to send."""
        self._key()

    def create(self, builder: RequestBuilder, works: Sequence[Any]) -> Created:
        """Create a batch of `works` (sealed or not; see requests.seal_work)."""
        with _handed_over(works) as handle:
            return _call("create", self.api, self._key(), self.retry, builder, handle)

    def submit(self, ledger: "LedgerSettings", run_id: str, builder: RequestBuilder, works: Sequence[Any],
               records: Optional[Dict[str, Any]] = None) -> Tuple[Created, bool, str]:
        """lifecycle.submit_once in the helper: (created, reused, ledger key).
        The helper opens the works, records them in the ledger (and writes
        their requests file) and creates the batch, so the ledger's record
        of a create is made by the process that made it. `records`: the
        packed records when `works` are bare Requests (re-asks). Raises
        lifecycle.SubmissionPending as submit_once does."""
        with _handed_over(works) as handle:
            return _call("submit", self.api, self._key(), self.retry, ledger, run_id, builder, handle, records)

    def create_batch(self, builder: RequestBuilder, works: Sequence[Any], ledger: Optional["LedgerSettings"],
                     run_id: str, records: Optional[Dict[str, Any]] = None) -> Tuple[Created, bool, Optional[str]]:
        """(created, reused, ledger key): through the ledger when there is one."""
        if ledger is None:
            return self.create(builder, works), False, None
        return self.submit(ledger, run_id, builder, works, records)

    def cancel(self, batch_id: str) -> None:
        _call("cancel", self.api, self._key(), self.retry, batch_id)

    def retrieve(self, batch_id: str) -> BatchState:
        return _call("retrieve", self.api, self._key(), self.retry, batch_id)

    def message(self, params: Dict[str, Any]) -> Dict[str, Any]:
        """One Messages API call: the message as the API's JSON (a dict)."""
        return _call("message", self.api, self._key(), self.retry, params)

    def results(self, batch_id: str) -> Iterator[bytes]:
        """The results file of an ended batch, in chunks of JSONL bytes."""
        return _stream("results", self.api, self._key(), batch_id)

    def collect(self, collector_args: Tuple[Any, ...], submitted: Any) -> str:
        """Collect `submitted` in the collect process: the path of a file of its
        items (collect.read_items). `collector_args`: collect.Collector's
        arguments after `calls`. Blocks until the batch is collected."""
        return shared(COLLECT).call("collect", self.api, self._key(), self.retry, collector_args, submitted)


def _call(op: str, *args: Any) -> Any:
    """`op` made by the helper, or right here in a helper (which would otherwise
    start a helper of its own)."""
    if _SERVING:
        return _CALLS[op](*args)
    return shared().call(op, *args)


def _stream(op: str, *args: Any) -> Iterator[Any]:
    """The chunks of stream `op`, from the helper or, in a helper, from right here."""
    if _SERVING:
        return _STREAMS[op](*args)
    return shared().stream(op, *args)


@functools.lru_cache(maxsize=64)
def wire_schema(canonical: str) -> Dict[str, Any]:
    """The output schema as sent (the SDK's transform_schema), computed by the
    helper once per schema and process (a pure function of the schema)."""
    return _call("wire_schema", canonical)


@contextlib.contextmanager
def _handed_over(works: Sequence[Any]) -> Iterator[Any]:
    """How `works` reach the op that opens them (_load): pickled into a temporary
    file (one write), removed afterwards; in a helper, the list itself."""
    if _SERVING:
        yield list(works)
        return
    fd, path = tempfile.mkstemp(prefix="claude-batch-", suffix=".pickle")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pickle.dumps(list(works), pickle.HIGHEST_PROTOCOL))
        yield path
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


# --------------------------------------------------------------------------
# The helper's side
# --------------------------------------------------------------------------

def _load(handle: Any):
    """The requests (and packed records) of works handed over (a works file, or the works)."""
    if isinstance(handle, list):
        return requests_of(handle)
    with open(handle, "rb") as f:
        return requests_of(pickle.load(f))


def _post(client, retry: RetryPolicy, builder: RequestBuilder, requests) -> Any:
    """The create call; the SDK's MessageBatch."""
    from anthropic.types.messages import MessageBatch

    # The SDK's own client (auth, base URL, errors) with a pre-encoded body:
    # messages.batches.create would deep-copy and re-encode the same
    # instructions once per request (see RequestBuilder.batch_body). Streamed
    # with its length, so the whole body is never in memory.
    body = builder.batch_body_stream(requests)
    return retry.call(lambda: client.post(
        "/v1/messages/batches", cast_to=MessageBatch, content=body,
        options={"headers": {"content-type": "application/json", "content-length": str(body.size)}}))


def _items(requests) -> int:
    return sum(len(r.items) for r in requests)


def _create(api, key, retry: RetryPolicy, builder: RequestBuilder, handle: Any) -> Created:
    requests, _ = _load(handle)
    return Created(_post(shared_client(api, key), retry, builder, requests).id, _items(requests))


def _submit(api, key, retry: RetryPolicy, ledger_settings, run_id: str,
            builder: RequestBuilder, handle: Any, records) -> Tuple[Created, bool, str]:
    from transforms import lifecycle

    requests, packed = _load(handle)
    client = shared_client(api, key)
    ledger = registry.per_process(("ledger", ledger_settings.path), ledger_settings.open)
    batch_id, reused, ledger_key = lifecycle.submit_once(
        ledger, ledger_settings.path, run_id, builder, requests, records if records is not None else packed,
        create=lambda: _post(client, retry, builder, requests),
        cancel=lambda batch_id: retry.call(lambda: client.messages.batches.cancel(batch_id)))
    return Created(batch_id, _items(requests)), reused, ledger_key


def _cancel(api, key, retry: RetryPolicy, batch_id: str) -> None:
    client = shared_client(api, key)
    retry.call(lambda: client.messages.batches.cancel(batch_id))


def _retrieve(api, key, retry: RetryPolicy, batch_id: str) -> BatchState:
    client = shared_client(api, key)
    batch = retry.call(lambda: client.messages.batches.retrieve(batch_id))
    return BatchState(batch.id, batch.processing_status, batch.ended_at)


def _message(api, key, retry: RetryPolicy, params: Dict[str, Any]) -> Dict[str, Any]:
    from transforms import fastjson

    client = shared_client(api, key)
    raw = retry.call(lambda: client.messages.with_raw_response.create(**params))
    return fastjson.loads(raw.http_response.content)


def _results(api, key, batch_id: str) -> Iterator[bytes]:
    client = shared_client(api, key)
    with client.messages.batches.with_streaming_response.results(batch_id) as response:
        yield from response.iter_bytes(RESULTS_CHUNK_BYTES)


def _collect(api, key, retry: RetryPolicy, collector_args, submitted) -> str:
    from transforms.collect import Collector, write_items

    collector = Collector(BatchCalls(api, retry, given_key=key), *collector_args)
    fd, path = tempfile.mkstemp(prefix="claude-collected-", suffix=".pickles")
    os.close(fd)
    try:
        write_items(path, collector.collect(submitted))
    except BaseException:
        os.unlink(path)
        raise
    return path


def _wire_schema(canonical: str) -> Dict[str, Any]:
    from transforms.requests import _wire_schema as in_process
    return in_process(canonical)


_CALLS = {"create": _create, "submit": _submit, "cancel": _cancel, "retrieve": _retrieve, "message": _message,
          "wire_schema": _wire_schema, "collect": _collect}
_STREAMS = {"results": _results}


def serve(fd: int, role: str = CALLS) -> None:
    """The helper's loop: one call at a time until the job closes its end."""
    # Ctrl-C reaches the whole process group: the job decides what happens,
    # and this process leaves when the job's end of the socket closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    global _SERVING
    _SERVING = True
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s api-process %(levelname)s %(message)s")
    import anthropic  # noqa: F401 - now, while the job starts up, not at its first call
    if role == COLLECT:
        import transforms.collect  # noqa: F401 - likewise (the answers' checks: jsonschema, pyarrow)
    from transforms import gctuning
    gctuning.lighten()  # as the job's own process: a collect builds as many short-lived objects

    conn = Connection(fd)
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            break
        try:
            for reply in _answer(message):
                conn.send_bytes(pickle.dumps(reply, pickle.HIGHEST_PROTOCOL))
        except (BrokenPipeError, ConnectionResetError):
            break
    # The job has gone: every call it made has run to its end (a ledger record
    # is written before the answer is sent), so nothing is left to clean up; the
    # interpreter's teardown of the SDK (~0.4 s) would only keep the
    # job waiting in ApiProcess.close.
    sys.stderr.flush()
    os._exit(0)


def _answer(message: bytes) -> Iterator[Tuple[str, Any]]:
    """The replies to one call: (ok, value), or chunks then (end, None), or (err, RemoteError)."""
    try:
        op, args, env = pickle.loads(message)
        for name, value in env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if op in _STREAMS:
            for chunk in _STREAMS[op](*args):
                yield _CHUNK, chunk
            yield _END, None
        else:
            yield _OK, _CALLS[op](*args)
    except (BrokenPipeError, ConnectionResetError):
        raise
    except Exception as e:  # noqa: BLE001 - every failure goes back to the caller, classified
        if _passes_through(e):
            yield _ERR, e
            return
        decision = classify(e)
        if not _is_sdk_error(e):
            _LOG.exception("API process: %s failed", type(e).__name__)  # a bug, not a refusal: keep the trace
        yield _ERR, RemoteError(decision, describe_error(e))


def _passes_through(exc: BaseException) -> bool:
    """Errors the caller acts on by type, sent back as they are (they pickle)."""
    # Looked up, not imported: only a submit, which imports it, can raise one.
    pending = getattr(sys.modules.get("transforms.lifecycle"), "SubmissionPending", None)
    return pending is not None and isinstance(exc, pending)


def _is_sdk_error(exc: BaseException) -> bool:
    anthropic = sys.modules.get("anthropic")
    return anthropic is not None and isinstance(exc, anthropic.AnthropicError)
