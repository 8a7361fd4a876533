"""Start a real, throwaway redis-server for tests (Debian package ``redis-server``).

The server listens on a free loopback port, keeps nothing on disk and is
stopped at teardown. When the binary is missing, tests fail with a clear
message under CI (the env var ``CI`` is set) and are skipped elsewhere.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Optional

import pytest

INSTALL_HINT = "apt-get update && apt-get install -y redis-server"
#: Seconds to wait for a started server to answer PING.
START_TIMEOUT_S = 10.0


def in_ci() -> bool:
    """True when the env var CI is set to anything but an explicit false."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def redis_server_binary() -> Optional[str]:
    return shutil.which("redis-server")


def require_redis_server() -> str:
    """The redis-server path; fails (under CI) or skips the test when it is absent."""
    binary = redis_server_binary()
    if binary is None:
        message = f"redis-server is not installed; install it with: {INSTALL_HINT}"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return binary


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A redis-server subprocess on 127.0.0.1; use as a context manager."""

    def __init__(self, binary: Optional[str] = None):
        self.binary = binary or require_redis_server()
        self.port: Optional[int] = None
        self._proc: Optional[subprocess.Popen] = None
        self._dir: Optional[tempfile.TemporaryDirectory] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self._dir = tempfile.TemporaryDirectory(prefix="redis-test-")
        last_error = ""
        for _ in range(3):  # a free port can be taken between probe and bind
            port = _free_port()
            proc = subprocess.Popen(
                [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", self._dir.name, "--daemonize", "no"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline and proc.poll() is None:
                if _ping(port):
                    self.port, self._proc = port, proc
                    return self
                time.sleep(0.02)
            if proc.poll() is None:
                proc.kill()
            output = proc.communicate(timeout=5)[0] or b""
            last_error = output.decode(errors="replace")[-2000:]
        self._dir.cleanup()
        raise RuntimeError(f"redis-server did not start: {last_error}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate(timeout=5)
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
