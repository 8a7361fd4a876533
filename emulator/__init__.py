"""A local Anthropic-compatible API: the embedded backend and the test double.

It speaks the real HTTP API (Messages, count_tokens, Message Batches, error
bodies, rate-limit headers) so the real `anthropic` SDK runs end to end
against it, answers deterministically (see emulator.answers), bills tokens
with its own stand-in tokenizer (emulator.tokenizer), and injects faults on
demand (see emulator.faults). It imports nothing from the product it serves.

Library use::

    import emulator
    with emulator.running(batch_delay_s=0, seed=1) as emu:
        client = anthropic.Anthropic(api_key="k", base_url=emu.base_url, max_retries=0)
        ...
        emu.stats()["duplicates_billed"]

Command: ``python -m emulator --port 8787`` (``--help`` lists every flag).

The server runs in its own thread with its own event loop, so a blocking
client (the sync SDK, a Beam DoFn) can share the process with it.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from typing import Any, Dict, Iterator, Optional

from aiohttp import web

from emulator.answers import expected_output
from emulator.config import EmulatorConfig
from emulator.faults import ALL_FAULTS

__all__ = ["Emulator", "EmulatorConfig", "start", "running", "expected_output", "ALL_FAULTS"]


class Emulator:
    """One emulator server on a loopback port, run in a background thread."""

    def __init__(self, config: Optional[EmulatorConfig] = None, **overrides: Any):
        config = config or EmulatorConfig()
        if overrides:
            config = config.replace(**overrides)
        from emulator.server import State

        self._state = State(config)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._runner: Optional[web.AppRunner] = None
        self.host = config.host
        self.port = config.port

    # -- lifecycle
    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> "Emulator":
        if self.running:
            return self
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(1024)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._state.base_url = self.base_url
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name=f"emulator:{self.port}", daemon=True)
        self._thread.start()
        ready.wait()

        async def boot() -> None:
            from emulator.server import make_app

            self._runner = web.AppRunner(make_app(self._state), access_log=None, shutdown_timeout=0.5,
                                         handle_signals=False)
            await self._runner.setup()
            await web.SockSite(self._runner, sock).start()

        asyncio.run_coroutine_threadsafe(boot(), self._loop).result(timeout=30)
        return self

    def stop(self) -> None:
        """Stop serving; pending handlers and batch processing are cancelled."""
        if self._loop is None:
            return
        loop = self._loop

        async def shutdown() -> None:
            self._state.batches.clear()
            if self._runner is not None:
                await self._runner.cleanup()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=30)
            loop.close()
            self._loop = None
            self._thread = None

    def __enter__(self) -> "Emulator":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- control (thread-safe: runs on the server's loop)
    def _call(self, fn, *args: Any, **kwargs: Any) -> Any:
        if self._loop is None:
            return fn(*args, **kwargs)

        async def call():
            return fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout=60)

    @property
    def config(self) -> EmulatorConfig:
        return self._state.config

    def stats(self, items: bool = True) -> Dict[str, Any]:
        """Counters (see emulator.stats); items=False leaves out the per-id dicts."""
        from emulator.server import snapshot

        return self._call(snapshot, self._state, items)

    def reset(self) -> None:
        """Forget stats, batches, prompt cache, buckets and fault counters."""
        self._call(self._state.reset)

    def configure(self, **changes: Any) -> EmulatorConfig:
        """Change config fields at runtime (faults, limits, delays...)."""
        return self._call(self._state.configure, changes)

    def batch_status(self, batch_id: str) -> Optional[str]:
        """processing_status of a batch, or None if unknown (no HTTP round trip)."""
        def get():
            b = self._state.batches.batches.get(batch_id)
            return b.status if b is not None else None

        return self._call(get)


def start(config: Optional[EmulatorConfig] = None, **overrides: Any) -> Emulator:
    """A started emulator on a free loopback port (unless config.port is set)."""
    return Emulator(config, **overrides).start()


@contextlib.contextmanager
def running(config: Optional[EmulatorConfig] = None, **overrides: Any) -> Iterator[Emulator]:
    """`with running(...) as emu:` — started on entry, stopped on exit."""
    emu = start(config, **overrides)
    try:
        yield emu
    finally:
        emu.stop()
