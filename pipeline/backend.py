"""Which API a command talks to: the real one, or the bundled emulator when asked for.

The emulator is never chosen silently: a scheduled job whose key went missing
must fail, not write synthetic answers as results. `--api-base local` is the
one way to ask for it.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator, Optional

from transforms.api.client import API_KEY_ENV, endpoint_provenance

#: The --api-base value that starts the bundled emulator in this process.
LOCAL = "local"
#: What rows answered by the bundled emulator carry in their `api_base` column.
EMULATOR_PROVENANCE = "local-emulator"


class NoBackend(ValueError):
    """No API key, no secret and no --api-base: nothing to talk to."""


def check_backend(opts: Any, environ: Any) -> None:
    """Refuse a run that has no key and did not ask for an endpoint (exit 2 by the caller)."""
    if opts.api_base or opts.api_key_secret or environ.get(API_KEY_ENV):
        return
    raise NoBackend(
        f"no API key: set {API_KEY_ENV}, or pass --api-key-secret projects/P/secrets/S/versions/V "
        "(Secret Manager), or pass --api-base local to run against the bundled emulator "
        "(synthetic answers, no cost)")


def provenance(api_base: Optional[str], local: bool) -> str:
    """The endpoint written into every row: where its answer came from, never a credential."""
    return EMULATOR_PROVENANCE if local else endpoint_provenance(api_base)


@contextlib.contextmanager
def endpoint(opts: Any) -> Iterator[Optional[str]]:
    """The base URL to call: the emulator's (started here, stopped on exit) for
    --api-base local, else --api-base as given (None: the SDK's default)."""
    if opts.api_base != LOCAL:
        yield opts.api_base
        return
    import emulator
    with emulator.running(batch_delay_s=getattr(opts, "emulator_batch_delay_s", 0.0) or 0.0) as emu:
        _announce(emu.base_url)
        yield emu.base_url


def _announce(base_url: str) -> None:
    bar = "=" * 78
    print(f"{bar}\n  LOCAL EMULATOR: --api-base local, so this run talks to the bundled Claude\n"
          f"  emulator at {base_url}. Answers are synthetic and cost nothing.\n"
          f"  Set {API_KEY_ENV} and omit --api-base to use the real API.\n{bar}",
          file=sys.stderr, flush=True)
