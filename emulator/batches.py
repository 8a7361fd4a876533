"""Message Batches: storage, paced processing, cancel/expiry, JSONL results.

A batch is processed in the background, its items spread evenly over
`batch_delay_s` (scaled), so a cancel or an expiry part-way leaves a
realistic mix: items done before it keep their result, the rest become
`canceled` / `expired`. Request counts stay at `processing` until the
batch ends, as the API documents. Each processed request keeps only a
compact result tuple (its params are dropped), and results are serialized
line by line while streaming, in a seeded shuffled order.
"""
from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

from emulator import jsonutil
from emulator.jsonutil import gc_paused
from emulator.engine import ApiError, Engine, invalid, message_body, parse_request, validate_params
from emulator.timeutil import new_id, rfc3339

CUSTOM_ID_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
EXPIRES_AFTER_S = 24 * 3600.0
CHUNK = 500

#: result tuple kinds
SUCCEEDED, ERRORED, CANCELED, EXPIRED = "succeeded", "errored", "canceled", "expired"


class BatchRequest:
    """One request of a batch: its params as parsed, with the shared values interned.

    The instructions, schema and model every request repeats are one object
    per batch (`SharedParams`), so a request costs its own message and a few
    small containers; its parsed items are kept from create for processing.
    """

    __slots__ = ("custom_id", "params", "parsed", "result", "garbled")

    def __init__(self, custom_id: str, params: Any, parsed: Optional[Tuple[bool, List[Any]]] = None):
        self.custom_id = custom_id
        self.params: Any = params
        self.parsed = parsed
        self.result: Optional[Tuple] = None
        self.garbled = False  # fault batch_result_garbled: its results line is cut in half


#: Params values a pipeline's requests repeat (instructions, schema, model).
SHARED_KEYS = ("model", "system", "output_config")
#: Distinct values interned per key and batch; past this, values are kept as sent.
MAX_SHARED_VALUES = 16


class SharedParams:
    """Replaces each shared params value by the first one of the batch with the
    same JSON form: the batch then holds its instructions once instead of once
    per request, and per-value work is memoized by identity (emulator/memo.py).

    Same JSON form, not ==: 1 == 1.0 == True in Python, not in JSON.
    """

    def __init__(self):
        # (JSON form, value) pairs, compared with ==: equal bytes compare by
        # memcmp, where a dict would hash all 10 KB of instructions per request.
        self._seen: Dict[str, List[Tuple[bytes, Any]]] = {key: [] for key in SHARED_KEYS}

    def intern(self, params: Dict[str, Any]) -> Dict[str, Any]:
        for key in SHARED_KEYS:
            value = params.get(key)
            if value is not None:
                params[key] = self._interned(self._seen[key], value)
        return params

    @staticmethod
    def _interned(seen: List[Tuple[bytes, Any]], value: Any) -> Any:
        for _, known in seen:
            if known is value:  # shared already (emulator/batchbody.py): no need to write it out
                return known
        if type(value) is str:  # (the model) strings have the same JSON form iff they are equal
            for _, known in seen:
                if type(known) is str and known == value:
                    return known
        form = jsonutil.dumps_bytes(value)
        for known_form, known in seen:
            if known_form == form:
                return known
        if len(seen) < MAX_SHARED_VALUES:
            seen.append((form, value))
        return value


class Batch:
    def __init__(self, seq: int, requests: List[BatchRequest], delay_s: float,
                 expire_after_s: Optional[float], seed: int):
        self.id = new_id("msgbatch_")
        self.seq = seq
        self.requests = requests
        self.created_at = time.time()
        self.created_mono = time.monotonic()
        self.expires_at = self.created_at + EXPIRES_AFTER_S
        self.ended_at: Optional[float] = None
        self.cancel_initiated_at: Optional[float] = None
        self.status = "in_progress"
        self.delay_s = delay_s
        self.expire_after_s = expire_after_s
        self.order_seed = f"{seed}:{seq}"
        self.msg_prefix = new_id("", 14)
        self.counts = {"processing": len(requests), "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        self.wake = asyncio.Event()
        self.task: Optional[asyncio.Task] = None
        self.processed = 0

    def to_json(self, base_url: str) -> Dict[str, Any]:
        ended = self.status == "ended"
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": self.status,
            "request_counts": dict(self.counts),
            "created_at": rfc3339(self.created_at),
            "expires_at": rfc3339(self.expires_at),
            "ended_at": rfc3339(self.ended_at) if self.ended_at else None,
            "cancel_initiated_at": rfc3339(self.cancel_initiated_at) if self.cancel_initiated_at else None,
            "archived_at": None,
            "results_url": f"{base_url}/v1/messages/batches/{self.id}/results" if ended else None,
        }

    # -- results
    def result_lines(self) -> Iterator[bytes]:
        """The JSONL lines, generated one at a time, in a seeded shuffled order."""
        order = list(range(len(self.requests)))
        random.Random(self.order_seed).shuffle(order)
        dumps = jsonutil.dumps_bytes
        for j in order:
            req = self.requests[j]
            r = req.result
            kind = r[0]
            if kind == SUCCEEDED:
                _, model, text, stop, tin, tout, tcc, tcr = r
                usage = {"input_tokens": tin, "output_tokens": tout, "cache_creation_input_tokens": tcc,
                         "cache_read_input_tokens": tcr, "service_tier": "batch"}
                result = {"type": SUCCEEDED,
                          "message": message_body(f"msg_{self.msg_prefix}{j:06x}", model, text, stop, usage)}
            elif kind == ERRORED:
                result = {"type": ERRORED, "error": {"type": "error", "error": {"type": r[1], "message": r[2]},
                                                     "request_id": None}}
            else:
                result = {"type": kind}
            line = dumps({"custom_id": req.custom_id, "result": result})
            yield (line[: len(line) // 2] if req.garbled else line) + b"\n"


class BatchStore:
    """All batches of the emulator, and their processing tasks."""

    def __init__(self, state):
        self.state = state
        self.batches: Dict[str, Batch] = {}
        self.seq = 0
        # Creates being received: batch processing waits for them (see _process).
        self._creating = 0
        self._quiet = asyncio.Event()
        self._quiet.set()

    @contextlib.contextmanager
    def receiving(self):
        """A create call is being read and parsed: processing yields to it.

        The real API answers a create while it works through earlier batches
        elsewhere; here both share one event loop, and processing chunks run
        between the reads of a 256 MB body, making the create as slow as the
        work queued before it. Processing only waits, it is never skipped.
        """
        self._creating += 1
        self._quiet.clear()
        try:
            yield
        finally:
            self._creating -= 1
            if not self._creating:
                self._quiet.set()

    def clear(self) -> None:
        for b in self.batches.values():
            if b.task is not None:
                b.task.cancel()
        self.batches.clear()

    def get(self, batch_id: str) -> Batch:
        b = self.batches.get(batch_id)
        if b is None:
            raise ApiError(404, "not_found_error", f"Message batch {batch_id!r} not found.")
        return b

    # -- create
    def create(self, body: Any) -> Batch:
        cfg = self.state.config
        if not isinstance(body, dict):
            raise invalid("body: Input should be a valid dictionary")
        raw = body.get("requests")
        if raw is None:
            raise invalid("requests: Field required")
        if not isinstance(raw, list) or not raw:
            raise invalid("requests: List should have at least 1 item after validation")
        if len(raw) > cfg.max_batch_requests:
            raise invalid(f"requests: List should have at most {cfg.max_batch_requests} items after "
                          f"validation, not {len(raw)}")
        seen = set()
        match = CUSTOM_ID_RE.match
        shared = SharedParams()
        stats = self.state.stats
        ids: List[str] = []  # counted as sent only once the whole create is accepted
        reqs: List[BatchRequest] = []
        for i, r in enumerate(raw):
            if not isinstance(r, dict):
                raise invalid(f"requests.{i}: Input should be a valid dictionary")
            cid = r.get("custom_id")
            if cid is None:
                raise invalid(f"requests.{i}.custom_id: Field required")
            if not isinstance(cid, str):
                raise invalid(f"requests.{i}.custom_id: Input should be a valid string")
            if match(cid) is None:
                if len(cid) > 64:
                    raise invalid(f"requests.{i}.custom_id: String should have at most 64 characters")
                if not cid:
                    raise invalid(f"requests.{i}.custom_id: String should have at least 1 character")
                raise invalid(f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
            if cid in seen:
                raise invalid(f"requests.{i}.custom_id: Duplicate custom_id {cid!r}: custom_id values "
                              f"must be unique within a batch")
            seen.add(cid)
            params = r.get("params")
            if params is None:
                raise invalid(f"requests.{i}.params: Field required")
            parsed = None
            if isinstance(params, dict):
                params = shared.intern(params)
                parsed = parse_request(params)
                for it in parsed[1]:
                    if it.id is not None:
                        ids.append(it.id)
            reqs.append(BatchRequest(cid, params, parsed))
        self.seq += 1
        batch = Batch(self.seq, reqs, cfg.scaled(cfg.batch_delay_s) or 0.0,
                      cfg.scaled(cfg.batch_expire_after_s), cfg.seed)
        self.batches[batch.id] = batch
        stats.batches_created += 1
        stats.batch_requests_received += len(reqs)
        stats.sent(ids)
        batch.task = asyncio.get_running_loop().create_task(self._run(batch))
        return batch

    # -- list
    def list(self, after_id: Optional[str], before_id: Optional[str], limit: int) -> Dict[str, Any]:
        ordered = sorted(self.batches.values(), key=lambda b: -b.seq)  # newest first
        if after_id is not None:
            idx = next((k for k, b in enumerate(ordered) if b.id == after_id), None)
            if idx is None:
                raise ApiError(404, "not_found_error", f"Message batch {after_id!r} not found.")
            rest = ordered[idx + 1:]
            page, has_more = rest[:limit], len(rest) > limit
        elif before_id is not None:
            idx = next((k for k, b in enumerate(ordered) if b.id == before_id), None)
            if idx is None:
                raise ApiError(404, "not_found_error", f"Message batch {before_id!r} not found.")
            rest = ordered[:idx]
            page, has_more = rest[-limit:], len(rest) > limit
        else:
            page, has_more = ordered[:limit], len(ordered) > limit
        base = self.state.base_url
        return {"data": [b.to_json(base) for b in page], "has_more": has_more,
                "first_id": page[0].id if page else None, "last_id": page[-1].id if page else None}

    # -- cancel / delete
    def cancel(self, batch_id: str) -> Batch:
        b = self.get(batch_id)
        if b.status == "in_progress":
            b.status = "canceling"
            b.cancel_initiated_at = time.time()
            b.wake.set()
        return b

    def delete(self, batch_id: str) -> Dict[str, str]:
        b = self.get(batch_id)
        if b.status != "ended":
            raise invalid(f"Message batch {batch_id} cannot be deleted while it is {b.status}; "
                          f"cancel it and wait for it to end first.")
        del self.batches[batch_id]
        return {"id": batch_id, "type": "message_batch_deleted"}

    # -- processing
    async def _run(self, batch: Batch) -> None:
        try:
            await self._process(batch)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # never leave a batch stuck: what is left errors
            for r in batch.requests:
                if r.result is None:
                    r.result = (ERRORED, "api_error", f"emulator failure: {e!r}")
            self._end(batch)

    async def _wait(self, batch: Batch, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        try:
            await asyncio.wait_for(batch.wake.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass

    async def _process(self, batch: Batch) -> None:
        n = len(batch.requests)
        start = batch.created_mono
        delay, expire = batch.delay_s, batch.expire_after_s
        i = 0
        ended_by = None
        while True:
            if batch.status == "canceling":
                ended_by = CANCELED
                break
            now = time.monotonic()
            elapsed = now - start
            if expire is not None and elapsed >= expire:
                ended_by = EXPIRED
                break
            if i >= n:
                if elapsed >= delay:
                    break
                due = delay - elapsed
                if expire is not None:
                    due = min(due, expire - elapsed)
                await self._wait(batch, due)
                continue
            allowed = n if delay <= 0 else min(n, int(n * elapsed / delay))
            if allowed > i and not self._quiet.is_set():
                await self._quiet.wait()  # a create is being received: it goes first
                continue
            if allowed > i:
                hi = min(allowed, i + CHUNK)
                with gc_paused():  # ~2x faster: per-item garbage is acyclic
                    for j in range(i, hi):
                        self._process_one(batch, batch.requests[j])
                i = hi
                batch.processed = i
                await asyncio.sleep(0)
            else:
                due = delay * (i + 1) / n - elapsed
                if expire is not None:
                    due = min(due, expire - elapsed)
                await self._wait(batch, max(due, 0.0) + 1e-4)
        for r in batch.requests[i:]:
            r.result = (ended_by or EXPIRED,)
            r.params = r.parsed = None
        self._end(batch)

    def _end(self, batch: Batch) -> None:
        counts = {"processing": 0, SUCCEEDED: 0, ERRORED: 0, CANCELED: 0, EXPIRED: 0}
        for r in batch.requests:
            counts[r.result[0]] += 1
        batch.counts = counts
        batch.status = "ended"
        batch.ended_at = time.time()
        totals = self.state.stats.batch_results
        for k in (SUCCEEDED, ERRORED, CANCELED, EXPIRED):
            totals[k] += counts[k]

    def _process_one(self, batch: Batch, req: BatchRequest) -> None:
        state = self.state
        params, parsed = req.params, req.parsed
        req.params = req.parsed = None
        try:
            info = validate_params(params, in_batch=True, models=state.config.models)
        except ApiError as e:
            req.result = (ERRORED, e.etype, e.message)
            return
        if parsed is None:  # params not a dict: validate_params refused it above
            parsed = (False, [])
        faults = state.faults if state.faults else None  # FaultSet.__bool__ asked once
        if faults is not None:
            ids = [it.id for it in parsed[1] if it.id is not None]
            if faults.fire("batch_item_expired", ids):
                state.stats.fault("batch_item_expired")
                req.result = (EXPIRED,)
                return
            spec = faults.fire("batch_item_errored", ids)
            if spec:
                state.stats.fault("batch_item_errored")
                etype = spec.opt("error_type") or "api_error"
                msg = ("Internal server error (injected by the emulator)" if etype == "api_error"
                       else "Invalid request (injected by the emulator)")
                req.result = (ERRORED, etype, msg)
                return
        engine: Engine = state.engine
        try:
            if not parsed[0]:  # one record, the usual request: the same answer without the pack machinery
                model, text, stop, usage, ids, answered = engine.answer_single(params, parsed[1][0], "batch",
                                                                               info)
            else:
                prep = engine.prepare(params, parsed, info)
        except ApiError as e:  # a prompt past the context window
            req.result = (ERRORED, e.etype, e.message)
            return
        if parsed[0]:
            answer, usage = engine.complete(prep, "batch")
            model, text, stop, ids, answered = prep.model, answer.text, answer.stop_reason, prep.ids, \
                answer.answered_ids
        state.stats.billed(ids, answered, usage, "batch")
        if faults is not None and faults.fire("batch_result_garbled", ids):
            state.stats.fault("batch_result_garbled")
            req.garbled = True
        req.result = (SUCCEEDED, model, text, stop, usage["input_tokens"], usage["output_tokens"],
                      usage["cache_creation_input_tokens"], usage["cache_read_input_tokens"])
