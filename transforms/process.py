"""ProcessWithClaude: the public composite, Records in, result rows and dead letters out."""
from __future__ import annotations

import dataclasses
import zlib
from typing import Iterator, Optional, Tuple, Union

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from transforms.prompts import packing
from transforms.batches.route import PollSettings, SubmitBatches, seal_work
from transforms.batching import BatchBounds, BatchByWeight
from transforms.api.client import ApiSettings, RetryPolicy
from transforms.batches.lifecycle import LedgerSettings
from transforms.messages import CallMessages, MessagesSettings
from transforms.modes import MESSAGES_MODES, MODES, PACKED_MODES
from transforms.prompts.outcomes import RowContext
from transforms.records import DeadLetter, Reason, Record, Stage
from transforms.prompts.requests import Request, RequestBuilder, SealedWork
from transforms.prompts.task import TemplateError
from transforms.api.tokens import estimate_tokens

__all__ = ["ProcessWithClaude", "ProcessSettings"]

DEAD = "dead_letter"
#: Records per pack by default: big enough that the shared instructions are a
#: small share of each request, small enough that one bad answer costs little.
DEFAULT_PACK_SIZE = 20
#: Estimated input tokens of a pack's items: keeps packs far from any
#: context window and keeps a re-ask cheap.
DEFAULT_PACK_MAX_INPUT_TOKENS = 24_000


class SealedWorkCoder(beam.coders.Coder):
    """A SealedWork as two varints and its bytes: deterministic, and no pickle
    of the record around the pickle it already is."""

    _FIELDS = beam.coders.TupleCoder([beam.coders.VarIntCoder(), beam.coders.VarIntCoder(),
                                      beam.coders.BytesCoder()])

    def encode(self, value: SealedWork) -> bytes:
        return self._FIELDS.encode((value.size_bytes, value.input_tokens, value.pickled))

    def decode(self, encoded: bytes) -> SealedWork:
        return SealedWork(*self._FIELDS.decode(encoded))

    def is_deterministic(self) -> bool:
        return True

    def to_type_hint(self):
        return SealedWork


beam.coders.registry.register_coder(SealedWork, SealedWorkCoder)
#: (shard, sealed Work): declared so the batcher's shuffle codes it with the
#: integer coder and SealedWorkCoder instead of pickling each pair.
_KEYED_WORK = Tuple[int, SealedWork]


@dataclasses.dataclass(frozen=True)
class ProcessSettings:
    """Everything ProcessWithClaude needs besides the records. Picklable, no secrets."""

    mode: str
    builder: RequestBuilder
    ctx: RowContext
    api: ApiSettings
    batch_bounds: BatchBounds
    batch_shards: int = 1
    poll: PollSettings = PollSettings()
    retry: RetryPolicy = RetryPolicy()
    pack_size: int = DEFAULT_PACK_SIZE
    pack_max_input_tokens: int = DEFAULT_PACK_MAX_INPUT_TOKENS
    messages: MessagesSettings = MessagesSettings()
    ledger: Optional[LedgerSettings] = None
    lifecycle: str = "all"
    #: Streaming: packs are cut by size or by this much waiting (processing time).
    max_buffering_s: Optional[float] = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")

    @property
    def packed(self) -> bool:
        return self.mode in PACKED_MODES

    def pack_bounds(self) -> BatchBounds:
        fits = packing.max_pack_items(self.builder.task.item_output_tokens)
        return BatchBounds(max_items=max(1, min(self.pack_size, fits)), max_tokens=self.pack_max_input_tokens,
                           max_buffering_s=self.max_buffering_s)


class _CheckPrompts(beam.DoFn):
    """Passes records whose prompt renders; a record the template cannot render
    is a dead letter here, before it can fail a whole pack or batch."""

    def __init__(self, builder: RequestBuilder):
        self._task = builder.task

    def process(self, record: Record) -> Iterator:
        try:
            self._task.render(record)
        except TemplateError as e:
            yield TaggedOutput(DEAD, _template_dead_letter(record, e))
            return
        yield record


def _template_dead_letter(record: Record, error: TemplateError) -> DeadLetter:
    return DeadLetter(record_id=record.record_id, pack_key=record.pack_key, stage=Stage.RENDER.value,
                      error_type=Reason.TEMPLATE_ERROR.value, error_message=str(error))


class _BuildKeyedRequests(beam.DoFn):
    """Record -> (shard, sealed Request), or its dead letter when the prompt
    does not render: the `batch` mode's whole way from a record to the batcher.

    One step instead of four (check the prompt, one record per work, build
    the request, key by shard): building a request renders the prompt anyway,
    and each step a record passes costs the runner a few microseconds.
    """

    def __init__(self, builder: RequestBuilder, shards: int):
        self._builder = builder
        self._shards = shards
        self._shared = None

    def setup(self):
        self._shared = self._builder.shared_size(False)

    def process(self, record: Record) -> Iterator:
        try:
            request = self._builder.single(record, shared=self._shared)
        except TemplateError as e:
            yield TaggedOutput(DEAD, _template_dead_letter(record, e))
            return
        yield keyed_work(request, self._shards)


class _BuildBatchRequests(beam.DoFn):
    """Work -> Request (singles) or (Request, records) (packs: kept for re-asks)."""

    def __init__(self, builder: RequestBuilder, packed: bool):
        self._builder = builder
        self._packed = packed
        self._shared = None

    def setup(self):
        # The shared part of every request is measured once per worker.
        self._shared = {p: self._builder.shared_size(p) for p in (False, True)}

    def process(self, work: Tuple[Record, ...]) -> Iterator[Union[Request, Tuple[Request, Tuple[Record, ...]]]]:
        packed = self._packed and len(work) > 1
        request = self._builder.request_for(list(work), self._packed, shared=self._shared[packed])
        yield (request, work) if self._packed else request


class _PackRecords(beam.DoFn):
    """(pack_key, records) -> packs (tuples of Records) within the pack bounds.

    Streams the group once, greedily; a record larger than the token bound
    goes alone. Packing after a GroupByKey rather than in a timer-flushed
    stateful DoFn: elements a timer emits at the end of the global window
    reach a second timer-flushed stage (the batcher) after its own timer
    fired, and the DirectRunner then never flushes them.
    """

    def __init__(self, bounds: BatchBounds, builder: RequestBuilder):
        self._bounds = bounds
        self._task = builder.task

    def process(self, element) -> Iterator[Tuple[Record, ...]]:
        _, records = element
        pack, size, tokens = [], 0, 0
        for record in sorted(records, key=lambda r: r.record_id):  # deterministic packs on retry
            add_tokens = estimate_tokens(self._task.render(record))
            add_size = len(record.text)
            if self._bounds.would_overflow(len(pack), size, tokens, add_size, add_tokens):
                yield tuple(pack)
                pack, size, tokens = [], 0, 0
            pack.append(record)
            size, tokens = size + add_size, tokens + add_tokens
        if pack:
            yield tuple(pack)


def shard_of(request: Request, shards: int) -> int:
    """Stable shard of a request (crc32, not hash(): stable across processes)."""
    return zlib.crc32(request.custom_id.encode("ascii")) % shards


def keyed_work(work, shards: int) -> _KEYED_WORK:
    """A Work as the batcher takes it: (its request's shard, the sealed Work)."""
    return shard_of(_request_of(work), shards), seal_work(work)


def _request_of(work) -> Request:
    return work[0] if isinstance(work, tuple) else work


def _weigh_request(work):
    if isinstance(work, SealedWork):
        return work.size_bytes, work.input_tokens
    request = _request_of(work)
    return request.size_bytes, request.input_tokens


class ProcessWithClaude(beam.PTransform):
    """PCollection[Record] -> {'results': PCollection[dict], 'dead_letter': PCollection[DeadLetter]}.

    Every input record ends in exactly one of the two outputs. Packs never
    mix two pack keys; results are matched to records by id, never by position.
    """

    def __init__(self, settings: ProcessSettings):
        super().__init__()
        self._s = settings

    def expand(self, records):
        s = self._s
        if s.mode == "batch" and not s.max_buffering_s:
            # Bounded jobs only: a streaming job keeps its four steps, whose
            # names a running job's `--update` must find again.
            built = records | "Build batch requests" >> beam.ParDo(
                _BuildKeyedRequests(s.builder, s.batch_shards)).with_output_types(
                _KEYED_WORK).with_outputs(DEAD, main="requests")
            out = _submit_keyed(built.requests, s, s.ctx)
            dead = ((built[DEAD], out["dead_letter"])
                    | "Merge processing dead letters" >> beam.Flatten())
            return {"results": out["results"], "dead_letter": dead}
        checked = records | "Check prompts" >> beam.ParDo(_CheckPrompts(s.builder)).with_outputs(
            DEAD, main="records")
        if s.packed and s.max_buffering_s:
            # Streaming: a pack goes out when full or after max_buffering_s.
            task = s.builder.task
            works = (checked.records
                     | "Key by pack key" >> beam.Map(lambda r: (r.pack_key, r)).with_output_types(
                         Tuple[str, Record])
                     | "Pack records" >> BatchByWeight(
                         s.pack_bounds(), lambda r: (len(r.text), estimate_tokens(task.render(r))))
                     | "Pack as work" >> beam.Map(lambda kv: tuple(kv[1])))
        elif s.packed:
            works = (checked.records
                     | "Key by pack key" >> beam.Map(lambda r: (r.pack_key, r))
                     | "Group by pack key" >> beam.GroupByKey()
                     | "Pack records" >> beam.ParDo(_PackRecords(s.pack_bounds(), s.builder)))
        else:
            works = checked.records | "One record per request" >> beam.Map(lambda r: (r,))

        if s.mode in MESSAGES_MODES:
            out = works | "Call Messages" >> CallMessages(
                s.api, s.builder, s.ctx, s.retry, s.messages, packed=s.packed,
                records_per_work=s.pack_bounds().max_items if s.packed else 1)
            if s.messages.shed_to == "batch":
                # Shed works finish through the Batch API; their rows say so
                # (mode batch / packed-batch, a batch_id).
                via = out["shed"] | "Shed to batches" >> _ViaBatches(s, shed=True)
                return {
                    "results": ((out["results"], via["results"])
                                | "Merge shed results" >> beam.Flatten()),
                    "dead_letter": ((checked[DEAD], out["dead_letter"], via["dead_letter"])
                                    | "Merge processing dead letters" >> beam.Flatten())}
        else:
            out = _via_batches(works, s, s.ctx)
        dead = ((checked[DEAD], out["dead_letter"])
                | "Merge processing dead letters" >> beam.Flatten())
        return {"results": out["results"], "dead_letter": dead}


def _via_batches(works, s: ProcessSettings, ctx: RowContext):
    """Works -> {'results', 'dead_letter'} through Message Batches: the batch
    modes' route, and the route of works shed by the Messages route."""
    shards = s.batch_shards
    keyed = (works
             | "Build batch requests" >> beam.ParDo(_BuildBatchRequests(s.builder, s.packed))
             | "Key by shard" >> beam.Map(keyed_work, shards).with_output_types(_KEYED_WORK))
    return _submit_keyed(keyed, s, ctx)


def _submit_keyed(keyed, s: ProcessSettings, ctx: RowContext):
    """(shard, sealed Work) pairs -> {'results', 'dead_letter'}: batched within
    the batch bounds per shard, then created, polled and collected."""
    return (keyed
            | "Batch requests" >> BatchByWeight(s.batch_bounds, _weigh_request)
            | "Submit batches" >> SubmitBatches(s.api, s.builder, ctx, s.poll, s.retry,
                                                max_reasks=s.messages.max_reasks, ledger=s.ledger,
                                                lifecycle_stage=s.lifecycle,
                                                streaming=bool(s.max_buffering_s)))


class _ViaBatches(beam.PTransform):
    """The batch route as one composite (for shed works: its own label scope)."""

    def __init__(self, settings: ProcessSettings, shed: bool = False):
        super().__init__()
        self._s = settings
        ctx = settings.ctx
        if shed:
            ctx = dataclasses.replace(ctx, mode="packed-batch" if settings.packed else "batch")
        self._ctx = ctx

    def expand(self, works):
        return _via_batches(works, self._s, self._ctx)
