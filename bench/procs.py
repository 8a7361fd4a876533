"""Child processes the benchmarks run: the emulator on a free loopback port.

One place for what bench/__main__.py, bench/throughput.py and
bench/streaming.py all need, so the three measure against the same setup."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any, Dict, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, data: Optional[bytes] = None) -> Any:
    """GET (or POST `data`) a JSON endpoint."""
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


class EmulatorProcess:
    """`python -m emulator FLAGS...` in its own process, on a free loopback port."""

    def __init__(self, flags: Sequence[str] = ()):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "emulator", "--port", str(self.port), *flags]
        self.proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "EmulatorProcess":
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(200):
            try:
                self.stats()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("emulator exited: " + self.proc.stderr.read().decode(errors="replace"))
                time.sleep(0.05)
        raise RuntimeError("emulator did not start")

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def stats(self) -> Dict[str, Any]:
        return get_json(self.base_url + "/_emulator/stats?items=0")

    def reset(self) -> None:
        get_json(self.base_url + "/_emulator/reset", b"{}")

    def config(self) -> Dict[str, Any]:
        return get_json(self.base_url + "/_emulator/config")


def save_rows(path: Optional[str], rows: Any) -> None:
    """The benchmark's rows as JSON at `path` (--json), if one was given."""
    if path:
        with open(path, "w") as f:
            json.dump(rows, f, indent=1)
