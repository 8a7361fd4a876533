"""Turning Records into Messages requests: pure, picklable, no I/O.

A Request carries only what differs between requests (the user message and
the ids it answers for). The shared parts (system prompt, schema, model) are
added by `RequestBuilder.params` at send time, so 100,000 queued requests do
not each carry a copy of a 5 KB system prompt through the pipeline.

The output schemas as sent (the SDK's transform of the task's schema) are
data the builder is given (WireSchemas, made by client.wire_schemas where the
job is built): this module imports neither the SDK nor any API module.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import operator
import pickle
from typing import Any, Dict, List, Optional, Sequence, Tuple

from transforms.prompts import packing
from transforms.records import Record
from transforms.prompts.task import Task
from transforms.api.tokens import estimate_request_tokens, estimate_tokens

#: json.dumps(a_str) without json.dumps's Python-level dispatch (same C function, same text).
_json_string = json.encoder.encode_basestring_ascii

#: Smallest prefix the API caches for most models; shorter ones are silently
#: not cached, so marking them would only add noise. Configurable per run.
DEFAULT_CACHE_MIN_TOKENS = 1024


@dataclasses.dataclass(frozen=True)
class Item:
    """One record's place in a request: enough to write its row, without its text."""

    record_id: str
    pack_key: str
    input_sha256: str
    tokens: int
    position: int = 0
    flags: Tuple[str, ...] = ()

    def __reduce__(self):
        # Pickled as its fields in order: unpickling calls __init__, about twice
        # as fast as restoring a __dict__ (a Work is unpickled once per record).
        return Item, _ITEM_FIELDS(self)


@dataclasses.dataclass(frozen=True)
class Request:
    """One Messages request (a single record or a pack) before it is sent."""

    custom_id: str
    pack_id: str
    pack_key: str
    items: Tuple[Item, ...]
    user_text: str
    packed: bool
    max_tokens: int
    input_tokens: int
    size_bytes: int
    attempt: int = 1

    @property
    def record_ids(self) -> List[str]:
        return [i.record_id for i in self.items]

    def __reduce__(self):
        return Request, _REQUEST_FIELDS(self)  # as Item.__reduce__


#: Each dataclass's fields in declaration order, as one C call (for __reduce__).
_ITEM_FIELDS = operator.attrgetter(*(f.name for f in dataclasses.fields(Item)))
_REQUEST_FIELDS = operator.attrgetter(*(f.name for f in dataclasses.fields(Request)))


class BatchBody:
    """A request body as a re-iterable of chunks, with its exact length.

    Passed as `content` with a Content-Length header, it is sent as one
    ordinary body (no chunked encoding), a chunk at a time; re-iterable, so
    a retried create sends it again.
    """

    #: Bytes per chunk handed to the socket: few writes, little memory.
    CHUNK_BYTES = 1 << 20

    def __init__(self, parts: List[bytes]):
        self._parts = parts
        self.size = sum(len(p) for p in parts)

    def __iter__(self):
        chunk, size = [], 0
        for part in self._parts:
            chunk.append(part)
            size += len(part)
            if size >= self.CHUNK_BYTES:
                yield b"".join(chunk)
                chunk, size = [], 0
        if chunk:
            yield b"".join(chunk)

    def __bytes__(self) -> bytes:
        return b"".join(self._parts)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclasses.dataclass(frozen=True)
class WireSchemas:
    """A task's output schemas as sent to the API, as JSON text: the API's
    structured outputs refuse keywords such as minimum/maxLength, and the
    SDK's transform (client.wire_schemas) moves them into descriptions.
    Computed once, where the job is built, and carried with the builder."""

    #: The schema of a single record's answer (None: free text).
    single: Optional[str]
    #: The schema of a pack's answer (packing.pack_schema of the task's).
    packed: str


@functools.lru_cache(maxsize=64)
def _parsed(text: str) -> Dict[str, Any]:
    return json.loads(text)


@dataclasses.dataclass(frozen=True)
class RequestBuilder:
    """Builds requests for one task; every method is a pure function of its inputs."""

    task: Task
    run_id: str
    prompt_cache: bool = True
    cache_min_tokens: int = DEFAULT_CACHE_MIN_TOKENS
    #: The output schemas as sent (client.wire_schemas(task)); needed by any
    #: request that has a schema (every pack, and singles of a task with one).
    wire_schemas: Optional[WireSchemas] = None

    def system_blocks(self, packed: bool) -> List[Dict[str, Any]]:
        text = self.task.system.rstrip() + "\n\n" + (
            packing.PACK_INSTRUCTIONS if packed else packing.SINGLE_INSTRUCTIONS)
        block: Dict[str, Any] = {"type": "text", "text": text}
        if self.prompt_cache and estimate_tokens(text) >= self.cache_min_tokens:
            block["cache_control"] = {"type": "ephemeral"}
        return [block]

    def output_schema(self, packed: bool) -> Optional[Dict[str, Any]]:
        """The schema as sent (see WireSchemas). Answers are still validated
        locally against the task's full schema."""
        if not packed and not self.task.output_schema:
            return None
        if self.wire_schemas is None:
            raise ValueError("this RequestBuilder was given no wire_schemas: build it with "
                             "wire_schemas=transforms.api.client.wire_schemas(task)")
        return _parsed(self.wire_schemas.packed if packed else self.wire_schemas.single)

    def params(self, request: Request) -> Dict[str, Any]:
        """The full Messages API body of a request."""
        params: Dict[str, Any] = {
            "model": self.task.model,
            "max_tokens": request.max_tokens,
            "system": self.system_blocks(request.packed),
            "messages": [{"role": "user", "content": request.user_text}],
        }
        schema = self.output_schema(request.packed)
        if schema:
            params["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
        return params

    def batch_body(self, requests: Sequence[Request]) -> bytes:
        """The JSON body of a Message Batches create call, as bytes (see batch_body_stream)."""
        return bytes(self.batch_body_stream(requests))

    def batch_body_stream(self, requests: Sequence[Request]) -> "BatchBody":
        """The JSON body of a Message Batches create call, sent in chunks.

        Equal to json.dumps({"requests": [{"custom_id", "params": params(r)}]})
        but built from a once-encoded shared part (system prompt, schema,
        model): a 100,000-request batch would otherwise re-encode the same
        instructions 100,000 times, and the SDK would deep-copy them first.
        The parts reference that shared part instead of copying it, so the
        whole body (up to 256 MB, nearly all repeated instructions) never
        exists in memory at once.
        """
        shared = {}
        parts = [b'{"requests":[']
        for n, request in enumerate(requests):
            head = shared.get(request.packed)
            if head is None:
                params = self.params(dataclasses.replace(request, user_text="", max_tokens=1))
                del params["messages"], params["max_tokens"]
                head = shared[request.packed] = json.dumps(params, separators=(",", ":"))[1:-1].encode()
            parts += [b',{"custom_id":' if n else b'{"custom_id":', json.dumps(request.custom_id).encode(),
                      b',"params":{', head, b',"max_tokens":', str(request.max_tokens).encode(),
                      b',"messages":[{"role":"user","content":', _json_string(request.user_text).encode(),
                      b"}]}}"]
        parts.append(b"]}")
        return BatchBody(parts)

    def _shared_size(self, packed: bool) -> Tuple[int, int]:
        """(bytes, tokens) of a request minus its user text; computed per call
        but cheap relative to json-dumping the full request per record."""
        empty = Request("x" * 64, "", "", (), "", packed, self.task.max_tokens, 0, 0)
        body = {"custom_id": empty.custom_id, "params": self.params(empty)}
        return len(json.dumps(body, separators=(",", ":"))), estimate_request_tokens(body["params"])

    def single(self, record: Record, shared: Optional[Tuple[int, int]] = None, attempt: int = 1) -> Request:
        """One record, one request. Raises TemplateError when the template cannot render."""
        content = self.task.render(record)
        return self._request([record], [content], packed=False, max_tokens=self.task.max_tokens,
                             shared=shared, attempt=attempt)

    def pack(self, records: Sequence[Record], shared: Optional[Tuple[int, int]] = None,
             attempt: int = 1) -> Request:
        """Several records of one pack key in one request (see packing.py)."""
        contents = [self.task.render(r) for r in records]
        max_tokens = packing.pack_max_tokens(len(records), self.task.item_output_tokens)
        return self._request(records, contents, packed=True, max_tokens=max_tokens, shared=shared,
                             attempt=attempt)

    def request_for(self, records: Sequence[Record], packed: bool, attempt: int = 1,
                    shared: Optional[Tuple[int, int]] = None) -> Request:
        """A pack when packing and there is more than one record, else a single request."""
        if packed and len(records) > 1:
            return self.pack(records, shared=shared, attempt=attempt)
        (record,) = records
        return self.single(record, shared=shared, attempt=attempt)

    def again(self, request: Request) -> Request:
        """The same request as a new attempt: same content, a new custom_id (so
        the ledger does not mistake it for the first one)."""
        return dataclasses.replace(
            request, attempt=request.attempt + 1,
            custom_id=packing.custom_id(self.run_id, request.pack_key, request.record_ids, request.attempt))

    def cached_prefix_tokens(self, packed: bool) -> int:
        """Tokens of the instructions marked for caching: once cached they are
        read, not counted toward the input-tokens-per-minute limit."""
        blocks = self.system_blocks(packed)
        if not any("cache_control" in b for b in blocks):
            return 0
        from transforms.api.tokens import system_tokens
        return system_tokens(blocks)

    def expected_output_tokens(self, request: Request) -> int:
        """What the limiter reserves for the answer before the API tells the truth."""
        return min(request.max_tokens, self.task.item_output_tokens * len(request.items))

    def _request(self, records: Sequence[Record], contents: Sequence[str], *, packed: bool,
                 max_tokens: int, shared: Optional[Tuple[int, int]], attempt: int = 1) -> Request:
        pack_key = records[0].pack_key
        if len(records) > 1 and any(r.pack_key != pack_key for r in records):
            raise ValueError(f"a request must hold one pack key, got {len({r.pack_key for r in records})}")
        ids = [r.record_id for r in records]
        items = tuple(Item(r.record_id, pack_key, sha256_text(c), estimate_tokens(c), pos, tuple(r.flags))
                      for pos, (r, c) in enumerate(zip(records, contents)))
        if packed:
            user_text = packing.render_pack(list(zip(ids, contents)))
        else:
            user_text = packing.render_item(ids[0], contents[0])
        shared_bytes, shared_tokens = shared or self._shared_size(packed)
        # The user text as the batch body writes it (json.dumps: non-ASCII
        # escaped), so this is the byte size sent; json's own C encoder.
        user_bytes = len(_json_string(user_text))
        return Request(
            custom_id=packing.custom_id(self.run_id, pack_key, ids, attempt - 1),
            pack_id=packing.pack_id(pack_key, ids),
            pack_key=pack_key, items=items, user_text=user_text, packed=packed,
            max_tokens=max_tokens,
            input_tokens=shared_tokens + estimate_tokens(user_text),
            size_bytes=shared_bytes + user_bytes, attempt=attempt)

    def shared_size(self, packed: bool) -> Tuple[int, int]:
        return self._shared_size(packed)


@dataclasses.dataclass(frozen=True)
class SealedWork:
    """A Work on its way to a batch (seal_work): its weight, and its fields as one pickle.

    Crosses the shard shuffle with a deterministic coder of its own
    (process.SealedWorkCoder: two varints and the bytes), and the batcher's
    state and the Reshuffle by pickle (as the class and its three fields)."""

    size_bytes: int
    input_tokens: int
    pickled: bytes

    def __reduce__(self):
        return SealedWork, (self.size_bytes, self.input_tokens, self.pickled)

#: Where `items` sits among a Request's fields (its flat form nests the Items' fields there).
_ITEMS_AT = [f.name for f in dataclasses.fields(Request)].index("items")
_RECORD_FIELDS = operator.attrgetter(*(f.name for f in dataclasses.fields(Record)))


def seal_work(work: Any) -> SealedWork:
    """A Work as its weight and one pickle.

    Between building a request and creating its batch, a Work crosses a
    shuffle and sits in the batcher's state: as a dataclass it was pickled
    twice and unpickled twice on the way, and the state cache walked every
    object of it to weigh the bag. As a SealedWork it is pickled once
    here, opened once where the batch is created and (without a ledger) once
    where it is collected, and Beam's coders only copy bytes.

    The pickle holds the fields as plain tuples, not the dataclasses: a
    pickled class is looked up again (an import) by every load, which made
    opening a single-record Work ~15 us instead of ~4 us.
    """
    if isinstance(work, tuple):
        request, records = work
        flat = (_flat_request(request), tuple(map(_RECORD_FIELDS, records)))
    else:
        request, flat = work, (_flat_request(work), None)
    return SealedWork(request.size_bytes, request.input_tokens, pickle.dumps(flat, pickle.HIGHEST_PROTOCOL))


def open_work(work: Any) -> Any:
    """The Work of a sealed Work; a Work passed as is (tests, callers of SubmitBatches) unchanged."""
    if not isinstance(work, SealedWork):
        return work
    request, records = pickle.loads(work.pickled)
    request = _request_of_flat(request)
    return request if records is None else (request, tuple(Record(*fields) for fields in records))


def _flat_request(request: Request) -> tuple:
    fields = _REQUEST_FIELDS(request)
    return fields[:_ITEMS_AT] + (tuple(map(_ITEM_FIELDS, request.items)),) + fields[_ITEMS_AT + 1:]


def _request_of_flat(fields: tuple) -> Request:
    items = tuple(Item(*item) for item in fields[_ITEMS_AT])
    return Request(*fields[:_ITEMS_AT], items, *fields[_ITEMS_AT + 1:])


def requests_of(works: Sequence[Any]) -> Tuple[List[Request], Optional[Dict[str, Record]]]:
    """The requests of Works (sealed or not), and the records of those that are packs (None if none)."""
    works = [open_work(w) for w in works]
    requests = [w[0] if isinstance(w, tuple) else w for w in works]
    records = {r.record_id: r for w in works if isinstance(w, tuple) for r in w[1]} or None
    return requests, records
