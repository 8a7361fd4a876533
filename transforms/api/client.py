"""How DoFns reach the API: picklable settings, clients built in setup()."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import urllib.parse
from typing import Any, Optional, Tuple

from transforms.prompts import packing
from transforms.api import registry
from transforms.prompts.requests import WireSchemas
from transforms.prompts.task import Task

#: Environment variable holding the API key. The key itself is never a
#: pipeline option (options are visible in the Dataflow UI and in logs).
API_KEY_ENV = "ANTHROPIC_API_KEY"
#: Key sent to the local emulator, which wants some key but checks none.
EMULATOR_KEY = "local-emulator"


@dataclasses.dataclass(frozen=True)
class ApiSettings:
    """Where and how to call the API. Contains no secret: safe to pickle and log."""

    base_url: Optional[str] = None  # None: the real API
    use_emulator_key: bool = False
    timeout_s: float = 120.0
    connect_timeout_s: float = 10.0
    #: Secret Manager version holding the key (projects/P/secrets/S/versions/V):
    #: the name is not secret, the value is read on the worker in setup().
    api_key_secret: Optional[str] = None

    def api_key(self) -> str:
        if self.use_emulator_key:
            return EMULATOR_KEY
        if self.api_key_secret:
            return read_secret(self.api_key_secret)
        key = os.environ.get(API_KEY_ENV)
        if not key:
            raise RuntimeError(f"{API_KEY_ENV} is not set on this worker; set it, pass "
                               "--api-key-secret, or pass --api-base local to use the local emulator")
        return key


#: What rows answered by Anthropic's API carry when no other endpoint was given.
DEFAULT_API_BASE = "https://api.anthropic.com"


def endpoint_provenance(base_url: Optional[str]) -> str:
    """An endpoint as written into rows: scheme, host, port and path; a user,
    password or query (where credentials hide) never."""
    if not base_url:
        return DEFAULT_API_BASE
    parts = urllib.parse.urlsplit(base_url)
    netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def wire_schemas(task: Task) -> WireSchemas:
    """The task's output schemas as sent to the API: the SDK's transform_schema
    of its schema (keys sorted first, as always) and of its pack schema. Called
    where the job is built; the builder carries the result to the workers."""
    import anthropic

    def wire(schema) -> str:
        return json.dumps(anthropic.transform_schema(json.loads(json.dumps(schema, sort_keys=True))))

    single = wire(dict(task.output_schema)) if task.output_schema else None
    return WireSchemas(single=single, packed=wire(packing.pack_schema(task.output_schema)))


def read_secret(name: str) -> str:
    """The value of a Secret Manager secret version (never logged)."""
    from google.cloud import secretmanager

    client = secretmanager.SecretManagerServiceClient()
    return client.access_secret_version(name=name).payload.data.decode("utf-8").strip()


def make_client(settings: ApiSettings):
    """An anthropic client with the SDK's retries off: our retry loop (tenacity)
    also feeds the rate limiter, and the two must not stack."""
    import anthropic

    return anthropic.Anthropic(
        api_key=settings.api_key(),
        base_url=settings.base_url,
        max_retries=0,
        timeout=anthropic.Timeout(settings.timeout_s, connect=settings.connect_timeout_s),
    )


def shared_client(settings: ApiSettings):
    """The process's client for these settings, built on first use and kept.

    Why not one per DoFn setup(): the DirectRunner calls setup() and teardown()
    for every bundle (in streaming, a bundle is one 10-message Pub/Sub pull),
    so each bundle paid for a new client (httpx pool, SSL context, a fresh
    connection) and the process's memory grew with the bundles run. An
    anthropic client is thread-safe, so one per process serves every DoFn
    and thread; it is never closed (it lives as long as the process).

    Keyed by the settings and, for a key from the environment, a digest of
    the key (a later run in the same process with another key gets its own
    client); a Secret Manager version is named by the settings, and is read
    once per process rather than once per bundle.
    """
    ident: Tuple[Any, ...] = ("client", settings)
    key = None if settings.api_key_secret else settings.api_key()
    if key:
        ident += (hashlib.sha256(key.encode("utf-8")).hexdigest(),)
    return registry.per_process(ident, lambda: make_client(settings))


def shared_pool(name: str, workers: int, scope: str = "") -> concurrent.futures.ThreadPoolExecutor:
    """The process's thread pool `name` for `scope` (say, a rate-limit budget) with
    `workers` threads, made on first use and kept (for the same reason as
    shared_client: no pool per bundle). Every DoFn instance of the scope shares
    it, as they already share the budget's concurrency gate of the same size."""
    return registry.per_process(("pool", name, scope, workers),
                   lambda: concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=name))


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Caps of the retry loop (transforms/api/retry.py): picklable settings only."""

    max_attempts: int = 6
    max_total_s: float = 600.0
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 60.0

    def call(self, fn, *, limiter=None, gate=None, stats=None, on_retry=None):
        """fn() with retries on retryable errors; raises the last error otherwise."""
        from transforms.api import retry
        return retry.call_with_retries(
            fn, limiter=limiter, gate=gate, max_attempts=self.max_attempts,
            max_total_s=self.max_total_s, initial_backoff_s=self.initial_backoff_s,
            max_backoff_s=self.max_backoff_s, stats=stats, on_retry=on_retry)


def describe_error(exc: BaseException) -> str:
    """A short, secret-free description of an API failure for a dead-letter row."""
    from transforms.api import retry
    decision = retry.classify(exc)
    return decision.reason or f"{type(exc).__name__}"
