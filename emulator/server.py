"""The aiohttp application: routes, auth, error bodies, request ids, stats.

Handlers stay thin: parsing and answers live in engine/answers, batches in
batches, limits in limits, faults in faults. Everything mutable lives in one
`State`, touched only from the server's event loop.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Dict, Optional

from aiohttp import web

from emulator import jsonutil
from emulator import models as model_table
from emulator.jsonutil import gc_paused
from emulator.batchbody import loads_batch_body
from emulator.batches import BatchStore
from emulator.cache import PromptCache
from emulator.config import EmulatorConfig
from emulator.engine import ApiError, Engine, invalid, message_body, validate_params
from emulator.faults import CLIENT_ERROR_FAULTS, FaultSet
from emulator.limits import RateLimiter
from emulator.stats import Stats
from emulator.timeutil import new_id
from emulator.tokenizer import estimate_request_tokens

log = logging.getLogger("emulator")

#: aiohttp refuses larger bodies itself (413); up to it we answer like the API.
CLIENT_MAX_SIZE = 300 * 1024 * 1024
_LIMIT_FIELDS = {"rpm", "itpm", "otpm", "bucket_capacity_s", "model_limits",
                 "default_rpm", "default_itpm", "default_otpm"}
STATE_KEY = web.AppKey("state", object)
REQUEST_ID = web.RequestKey("request_id", str)
#: The model whose rate-limit headers an answer carries (a known model of its body).
RL_MODEL = web.RequestKey("ratelimit_model", str)


class _Dropped(Exception):
    """The handler closed the connection on purpose (drop/timeout faults)."""


class State:
    def __init__(self, config: EmulatorConfig):
        self.config = config
        self.base_url = ""
        self.stats = Stats()
        self.cache = PromptCache()
        self.faults = FaultSet.parse(config.faults, seed=config.seed)
        self.limiter = RateLimiter(config)
        self.engine = Engine(self)
        self.batches = BatchStore(self)
        self.message_counter = 0
        self.receive_buffer = ReceiveBuffer()

    def reset(self) -> None:
        """Forget stats, batches, cache, buckets and fault counters (keep config)."""
        self.stats.reset()
        self.cache.clear()
        self.batches.clear()
        self.faults = FaultSet.parse(self.config.faults, seed=self.config.seed)
        self.limiter = RateLimiter(self.config)

    def configure(self, changes: Dict[str, Any]) -> EmulatorConfig:
        new = self.config.replace(**changes)
        self.config = new
        self.limiter.config = new
        if "faults" in changes or "seed" in changes:
            self.faults = FaultSet.parse(new.faults, seed=new.seed)
        if _LIMIT_FIELDS & set(changes):
            self.limiter = RateLimiter(new)
        return new


def _error_body(request: web.Request, etype: str, message: str) -> bytes:
    return jsonutil.dumps_bytes({"type": "error", "error": {"type": etype, "message": message},
                                 "request_id": request.get(REQUEST_ID)})


def error_response(request: web.Request, status: int, etype: str, message: str,
                   headers: Optional[Dict[str, str]] = None) -> web.Response:
    return web.Response(status=status, body=_error_body(request, etype, message),
                        content_type="application/json", headers=headers)


def json_response(data: Any, status: int = 200, headers: Optional[Dict[str, str]] = None) -> web.Response:
    return web.Response(status=status, body=jsonutil.dumps_bytes(data), content_type="application/json",
                        headers=headers)


def _route_key(request: web.Request) -> str:
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    canonical = getattr(resource, "canonical", None) if resource is not None else None
    return f"{request.method} {canonical or 'unmatched'}"


def _api_key(request: web.Request) -> Optional[str]:
    key = request.headers.get("x-api-key")
    if key:
        return key
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer " and auth[7:].strip():
        return auth[7:].strip()
    return None


@web.middleware
async def middleware(request: web.Request, handler):
    state: State = request.app[STATE_KEY]
    request[REQUEST_ID] = new_id("req_")
    status: Any = 500
    try:
        if request.path.startswith("/v1/"):
            key = _api_key(request)
            if key is None:
                raise ApiError(401, "authentication_error", "x-api-key header is required")
            allowed = state.config.api_keys
            if allowed is not None and key not in allowed:
                raise ApiError(401, "authentication_error", "invalid x-api-key")
            if not request.headers.get("anthropic-version"):
                raise invalid("anthropic-version: header is required")
        response = await handler(request)
        status = response.status
        return response
    except ApiError as e:
        status = e.status
        return error_response(request, e.status, e.etype, e.message, e.headers)
    except _Dropped as e:
        # The transport is already aborted: this response is never written.
        status = str(e)
        return web.Response(status=499)
    except web.HTTPException as e:
        status = e.status
        etype = {404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large"}.get(
            e.status, "invalid_request_error" if e.status < 500 else "api_error")
        message = {404: f"Not found: {request.method} {request.path}",
                   405: f"Method {request.method} not allowed for {request.path}",
                   413: "Request exceeds the maximum allowed number of bytes."}.get(e.status, e.reason)
        return error_response(request, e.status, etype, message)
    except (asyncio.CancelledError, ConnectionResetError):
        status = "disconnected"
        raise
    except Exception as e:  # a bug in the emulator: say so like the API would
        log.exception("emulator handler failed")
        status = 500
        return error_response(request, 500, "api_error", f"Internal server error (emulator: {e!r})")
    finally:
        state.stats.route(_route_key(request), status)


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    rid = request.get(REQUEST_ID)
    if rid:
        response.headers["request-id"] = rid
    if request.path.startswith("/v1/") and "anthropic-ratelimit-requests-limit" not in response.headers:
        # Every API answer carries the rate-limit headers: those of the body's model
        # when it is known, else the default (model-less) limits.
        state: State = request.app[STATE_KEY]
        response.headers.update(state.limiter.headers(request.get(RL_MODEL, "")))


def _parse_json(body: bytes | bytearray, loads: Callable[[bytes | bytearray], Any] = jsonutil.loads) -> Any:
    try:
        return loads(body)
    except ValueError as e:
        raise invalid(f"Request body is not valid JSON: {e}")


class ReceiveBuffer:
    """The memory of the last large batch body, kept for the next one.

    Filling a fresh 256 MB buffer cost ~0.19 s, nearly all page faults (the
    kernel maps and zeroes each page on first touch); filling one whose pages
    are mapped already, ~0.04 s. A batch job's creates come one after another,
    so each large body is read into the last one's memory. The event loop runs
    one handler at a time: a create that finds the buffer taken gets a fresh one.
    """

    #: Smaller bodies fault in little: not worth keeping memory for.
    MIN_BYTES = 16 << 20

    def __init__(self):
        self._free: Optional[bytearray] = None

    def take(self, size: int) -> bytearray:
        """A buffer of exactly `size` bytes (its contents are overwritten by the caller)."""
        buf, self._free = self._free, None
        if buf is None or size < self.MIN_BYTES:
            return bytearray(size)
        if len(buf) > size:
            del buf[size:]
        elif len(buf) < size:
            buf.extend(bytes(size - len(buf)))
        return buf

    def give_back(self, buf: bytes | bytearray) -> None:
        """`buf` is no longer read by anyone: keep it for the next large body."""
        if isinstance(buf, bytearray) and len(buf) >= self.MIN_BYTES:
            self._free = buf


async def _read_body(request: web.Request, buffer: Optional[ReceiveBuffer] = None) -> bytes | bytearray:
    """The request body, as `request.read()` gives it (413 past CLIENT_MAX_SIZE).

    With a Content-Length, the chunks are copied into one buffer of that size
    (from `buffer` when given): `request.read()` grows a bytearray and then
    copies it into bytes, and every copy of a 256 MB batch body costs ~0.2 s
    of page faults.
    """
    size = request.content_length
    if size is None:  # chunked: nothing to size a buffer with
        return await request.read()
    if size > CLIENT_MAX_SIZE:
        raise web.HTTPRequestEntityTooLarge(CLIENT_MAX_SIZE, size)
    content = request.content
    content.set_read_chunk_size(size)  # as read() does: no pausing every 128 KB
    body = buffer.take(size) if buffer is not None else bytearray(size)
    filled = 0
    while chunk := await content.readany():
        end = filled + len(chunk)
        if end > CLIENT_MAX_SIZE:  # a compressed body can inflate past its length
            raise web.HTTPRequestEntityTooLarge(CLIENT_MAX_SIZE, end)
        body[filled:end] = chunk  # grows the buffer if an inflated body outgrows it
        filled = end
    del body[filled:]  # a body shorter than announced (or empty)
    return body


async def _read_json(request: web.Request) -> Any:
    return _parse_json(await _read_body(request))



def _drop(request: web.Request, why: str):
    transport = request.transport
    if transport is not None:
        transport.abort()
    raise _Dropped(why)


# ---------------------------------------------------------------- Messages

def _validate(request: web.Request, state: "State", body: Any, count_tokens: bool = False):
    """validate_params(body) (its ModelInfo); the model's rate-limit headers go with the answer."""
    models = state.config.models
    try:
        info = validate_params(body, count_tokens=count_tokens, models=models)
    except ApiError:
        model = body.get("model") if isinstance(body, dict) else None
        if isinstance(model, str) and model_table.lookup(model, models) is not None:
            request[RL_MODEL] = model
        raise
    request[RL_MODEL] = body["model"]
    return info


async def messages(request: web.Request) -> web.StreamResponse:
    state: State = request.app[STATE_KEY]
    state.stats.messages_calls += 1
    body = await _read_json(request)
    info = _validate(request, state, body)
    engine = state.engine
    prep = engine.prepare(body, None, info)
    ids = prep.ids
    state.stats.sent(ids)
    model = prep.model
    faults = state.faults
    cfg = state.config

    # HTTP-level faults, in a fixed order.
    if faults:
        if faults.fire("drop_connection", ids):
            state.stats.fault("drop_connection")
            _drop(request, "dropped")
        spec = faults.fire("timeout", ids)
        if spec:
            state.stats.fault("timeout")
            await asyncio.sleep(float(spec.opt("hang_s")))
            _drop(request, "timeout")
        rl_headers = state.limiter.headers(model)
        if faults.fire("spend_cap_429", ids):
            state.stats.fault("spend_cap_429")
            raise ApiError(429, "rate_limit_error",
                           "This request would exceed your organization's monthly spend limit: you have "
                           "reached your specified API usage limits. You will regain access at the start "
                           "of next month.", rl_headers)
        spec = faults.fire("status_429", ids)
        if spec:
            state.stats.fault("status_429")
            raise ApiError(429, "rate_limit_error",
                           "This request would exceed the rate limit for your organization (injected by "
                           "the emulator).", {**rl_headers, "retry-after": str(int(spec.opt("retry_after")))})
        if faults.fire("status_529", ids):
            state.stats.fault("status_529")
            raise ApiError(529, "overloaded_error", "Overloaded", rl_headers)
        if faults.fire("status_500", ids):
            state.stats.fault("status_500")
            raise ApiError(500, "api_error", "Internal server error", rl_headers)
        for name, (status, etype, message) in CLIENT_ERROR_FAULTS.items():
            if faults.fire(name, ids):
                state.stats.fault(name)
                raise ApiError(status, etype, message)
        spec = faults.fire("slow", ids)
        if spec:
            state.stats.fault("slow")
            await asyncio.sleep(float(spec.opt("slow_s")))
            prep = engine.prepare(body, (prep.is_pack, prep.items), info)  # the cache may have moved on

    # Rate limits: check, then charge requests and input tokens up front.
    limiter = state.limiter
    refused = limiter.check(model, prep.billable_input)
    if refused is not None:
        message, retry_after = refused
        state.stats.rate_limited += 1
        raise ApiError(429, "rate_limit_error", message,
                       {**limiter.headers(model), "retry-after": str(retry_after)})
    limiter.charge(model, prep.billable_input)

    answer, usage = engine.complete(prep, "standard")
    delay = cfg.latency_ms / 1000.0
    if cfg.output_tokens_per_s:
        delay += answer.output_tokens / cfg.output_tokens_per_s
    delay *= cfg.time_scale
    if delay > 0:
        await asyncio.sleep(delay)
    state.limiter.charge_output(model, answer.output_tokens)
    transport = request.transport
    delivered = transport is not None and not transport.is_closing()
    state.stats.billed(ids, answer.answered_ids if delivered else (), usage, "standard")
    state.stats.messages_succeeded += 1
    msg = message_body(new_id("msg_"), model, answer.text, answer.stop_reason, usage)
    return json_response(msg, headers=state.limiter.headers(model))


async def count_tokens(request: web.Request) -> web.Response:
    state: State = request.app[STATE_KEY]
    state.stats.count_tokens_calls += 1
    body = await _read_json(request)
    _validate(request, state, body, count_tokens=True)
    return json_response({"input_tokens": estimate_request_tokens(body)})


# ---------------------------------------------------------------- Batches

async def batch_create(request: web.Request) -> web.Response:
    state: State = request.app[STATE_KEY]
    with state.batches.receiving():
        return await _create_batch(state, request)


async def _create_batch(state: "State", request: web.Request) -> web.Response:
    raw = await _read_body(request, state.receive_buffer)
    limit = state.config.max_batch_bytes
    if len(raw) > limit:
        raise invalid(f"Request body of {len(raw)} bytes exceeds the maximum of {limit} bytes "
                      f"for a message batch (256 MB).")
    # Parsing 100,000 requests makes millions of short-lived objects: with the
    # cyclic GC running, that is ~5x slower. Nothing here forms cycles.
    with gc_paused():
        body = _parse_json(raw, loads_batch_body)
        state.receive_buffer.give_back(raw)  # parsed: nothing refers to its bytes any more
        del raw  # 256 MB: not kept while the batch is created
        batch = state.batches.create(body)
        del body
    return json_response(batch.to_json(state.base_url))


async def batch_retrieve(request: web.Request) -> web.Response:
    state: State = request.app[STATE_KEY]
    return json_response(state.batches.get(request.match_info["batch_id"]).to_json(state.base_url))


async def batch_list(request: web.Request) -> web.Response:
    state: State = request.app[STATE_KEY]
    q = request.query
    try:
        limit = int(q.get("limit", "20"))
    except ValueError:
        raise invalid("limit: Input should be a valid integer")
    if not 1 <= limit <= 1000:
        raise invalid("limit: Input should be between 1 and 1000")
    return json_response(state.batches.list(q.get("after_id"), q.get("before_id"), limit))


async def batch_cancel(request: web.Request) -> web.Response:
    state: State = request.app[STATE_KEY]
    return json_response(state.batches.cancel(request.match_info["batch_id"]).to_json(state.base_url))


async def batch_delete(request: web.Request) -> web.Response:
    state: State = request.app[STATE_KEY]
    return json_response(state.batches.delete(request.match_info["batch_id"]))


async def batch_results(request: web.Request) -> web.StreamResponse:
    state: State = request.app[STATE_KEY]
    batch = state.batches.get(request.match_info["batch_id"])
    if batch.status != "ended":
        raise invalid(f"Message batch {batch.id} is still {batch.status}; results are available "
                      f"once it has ended.")
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/x-jsonl"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    lines = batch.result_lines()
    while True:
        buf = []
        size = 0
        with gc_paused():
            for line in lines:
                buf.append(line)
                size += len(line)
                if size >= 256 * 1024:
                    break
        if not buf:
            break
        await response.write(b"".join(buf))
    await response.write_eof()
    return response


# ---------------------------------------------------------------- control

async def control_stats(request: web.Request) -> web.Response:
    state: State = request.app[STATE_KEY]
    items = request.query.get("items", "1").lower() not in ("0", "false", "no")
    return json_response(snapshot(state, items=items))


async def control_reset(request: web.Request) -> web.Response:
    state: State = request.app[STATE_KEY]
    state.reset()
    return json_response({"ok": True})


async def control_config(request: web.Request) -> web.Response:
    state: State = request.app[STATE_KEY]
    if request.method == "POST":
        changes = await _read_json(request)
        if not isinstance(changes, dict):
            raise invalid("config: expected a JSON object of config fields")
        try:
            state.configure(changes)
        except (ValueError, TypeError) as e:
            raise invalid(f"config: {e}")
    shown = state.config.to_dict()
    if shown.get("api_keys"):
        shown["api_keys"] = ["<redacted>"] * len(shown["api_keys"])  # never echo keys
    return json_response(shown)


def snapshot(state: State, items: bool = True) -> Dict[str, Any]:
    out = state.stats.snapshot(items=items)
    out["batches_in_progress"] = sum(1 for b in state.batches.batches.values() if b.status != "ended")
    return out


def make_app(state: State) -> web.Application:
    app = web.Application(middlewares=[middleware], client_max_size=CLIENT_MAX_SIZE)
    app[STATE_KEY] = state
    app.on_response_prepare.append(_on_prepare)
    r = app.router
    r.add_post("/v1/messages", messages)
    r.add_post("/v1/messages/count_tokens", count_tokens)
    r.add_post("/v1/messages/batches", batch_create)
    r.add_get("/v1/messages/batches", batch_list)
    r.add_get("/v1/messages/batches/{batch_id}", batch_retrieve)
    r.add_delete("/v1/messages/batches/{batch_id}", batch_delete)
    r.add_post("/v1/messages/batches/{batch_id}/cancel", batch_cancel)
    r.add_get("/v1/messages/batches/{batch_id}/results", batch_results)
    r.add_get("/_emulator/stats", control_stats)
    r.add_post("/_emulator/reset", control_reset)
    r.add_get("/_emulator/config", control_config)
    r.add_post("/_emulator/config", control_config)
    return app
