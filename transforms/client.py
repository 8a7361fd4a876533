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

    def api_key(self) -> str:
        if self.use_emulator_key:
            return EMULATOR_KEY
        key = os.environ.get(API_KEY_ENV)
        if not key:
            raise RuntimeError(f"{API_KEY_ENV} is not set on this worker; set it, or pass "
                               "--api-base local to use the local emulator")
        return key


def make_client(settings: ApiSettings):
    """An anthropic client with the SDK's retries off: our retry loop (tenacity)
    also feeds the rate limiter, and the two must not stack."""
    import anthropic
    import httpx

    return anthropic.Anthropic(
        api_key=settings.api_key(),
        base_url=settings.base_url,
        max_retries=0,
        timeout=httpx.Timeout(settings.timeout_s, connect=settings.connect_timeout_s),
    )
