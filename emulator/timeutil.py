"""RFC 3339 timestamps, ids and the clock, in one place."""
from __future__ import annotations

import datetime as _dt
import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZabcdefghijkmnpqrstvwxyz"


def rfc3339(ts: float) -> str:
    """Wall-clock seconds as an RFC 3339 UTC string, e.g. 2026-01-02T03:04:05.678901Z."""
    return _dt.datetime.fromtimestamp(ts, tz=_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_id(prefix: str, length: int = 24) -> str:
    """A random id like the API's (msg_01..., msgbatch_01..., req_01...)."""
    raw = os.urandom(length)
    return prefix + "01" + "".join(_ALPHABET[b % len(_ALPHABET)] for b in raw[: length - 2])


now = time.time
monotonic = time.monotonic
