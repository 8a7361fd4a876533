"""How DoFns reach the API: picklable settings, clients built in setup()."""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

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


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Caps of the retry loop (transforms/retry.py): picklable settings only."""

    max_attempts: int = 6
    max_total_s: float = 600.0
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 60.0

    def call(self, fn, *, limiter=None, gate=None, stats=None, on_retry=None):
        """fn() with retries on retryable errors; raises the last error otherwise."""
        from transforms import retry
        return retry.call_with_retries(
            fn, limiter=limiter, gate=gate, max_attempts=self.max_attempts,
            max_total_s=self.max_total_s, initial_backoff_s=self.initial_backoff_s,
            max_backoff_s=self.max_backoff_s, stats=stats, on_retry=on_retry)


def describe_error(exc: BaseException) -> str:
    """A short, secret-free description of an API failure for a dead-letter row."""
    from transforms import retry
    decision = retry.classify(exc)
    return decision.reason or f"{type(exc).__name__}"
