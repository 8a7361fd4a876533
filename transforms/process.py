"""ProcessWithClaude: the public composite, Records in, result rows and dead letters out."""
from __future__ import annotations

import dataclasses
import hashlib
import zlib
from typing import Iterator, Optional, Tuple, Union

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from transforms.prompts import packing
from transforms.batches.route import PollSettings, SubmitBatches, seal_work
from transforms.batching import MAX_BATCH_BYTES, MAX_BATCH_REQUESTS, BatchBounds, BatchByWeight
from transforms.api.client import ApiSettings, RetryPolicy, endpoint_provenance, wire_schemas
from transforms.api.costs import load_prices
from transforms.io.normalize import FieldMap, has_surrogates, raw_to_text
from transforms.io.rows import NormalizeRows
from transforms.screen.injection import ScreenRecords
from transforms.batches.lifecycle import LedgerSettings
from transforms.messages import CallMessages, MessagesSettings
from transforms.modes import BATCH_MODES, MESSAGES_MODES, MODES, PACKED_MODES
from transforms.prompts.outcomes import RowContext, dead_letter_row
from transforms.records import DeadLetter, Reason, Record, Stage
from transforms.prompts.requests import Request, RequestBuilder, SealedWork
from transforms.prompts.task import Task, TemplateError, load_task
from transforms.api.tokens import estimate_tokens

__all__ = ["ProcessWithClaude", "ProcessSettings", "library_run_id"]

DEAD = "dead_letter"
#: Records per pack by default: big enough that the shared instructions are a
#: small share of each request, small enough that one bad answer costs little.
DEFAULT_PACK_SIZE = 20
#: Estimated input tokens of a pack's items: keeps packs far from any
#: context window and keeps a re-ask cheap.
DEFAULT_PACK_MAX_INPUT_TOKENS = 24_000
#: Streaming input: the longest a pack or a batch waits for more records
#: before it is sent (processing time), when the caller gives no other.
DEFAULT_MAX_BUFFERING_S = 5.0


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
            prompt = self._task.render(record)
        except TemplateError as e:
            yield TaggedOutput(DEAD, _template_dead_letter(record, e))
            return
        if not prompt.isascii() and has_surrogates(prompt):
            # A template field holds bytes that are not UTF-8 (the id, text and
            # pack key were checked when read): the record is not sent at all.
            yield TaggedOutput(DEAD, _invalid_utf8_dead_letter(record))
            return
        yield record


def _invalid_utf8_dead_letter(record: Record) -> DeadLetter:
    fields = sorted(k for k, v in record.attrs.items() if isinstance(v, str) and has_surrogates(v))
    return DeadLetter(record_id=record.record_id, pack_key=record.pack_key, stage=Stage.RENDER.value,
                      error_type=Reason.INVALID_UTF8.value,
                      error_message=f"template field(s) {', '.join(map(repr, fields))} contain bytes "
                                    "that are not valid UTF-8",
                      raw=raw_to_text({"text": record.text, **record.attrs}))


def _template_dead_letter(record: Record, error: TemplateError) -> DeadLetter:
    return DeadLetter(record_id=record.record_id, pack_key=record.pack_key, stage=Stage.RENDER.value,
                      error_type=Reason.TEMPLATE_ERROR.value, error_message=str(error))


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
    """Records in; result rows and dead-letter rows out, one row per record.

    PCollection[Record] (or, when built with ``fields``, PCollection[Mapping]
    of raw rows) -> ``{'results': PCollection[dict], 'dead_letter': PCollection[dict]}``,
    both rows of the Parquet schemas in ``transforms.io.schema``
    (``results_schema(task.output_schema)`` and ``DEAD_LETTER_SCHEMA``).

    Every input ends in exactly one of the two outputs. Packs never mix two
    pack keys; answers are matched to records by id, never by position.
    Whether the input is bounded or streaming is taken from the input
    PCollection: unbounded input sends a pack or a batch when it is full or
    after ``max_buffering_s``. All API calls are made in the worker's own
    process; nothing starts a subprocess.

    Most callers want :meth:`from_task`; the constructor takes fully resolved
    settings (what ``python -m pipeline`` builds from its flags).
    """

    def __init__(self, settings: ProcessSettings, *, fields: Optional[FieldMap] = None,
                 injection_policy: str = "flag", injection_patterns: Optional[str] = None):
        super().__init__()
        self._s = settings
        self._fields = fields
        # Validated (and the pattern file read) now, while the pipeline is built.
        self._screen = ScreenRecords(injection_policy, injection_patterns) if fields is not None else None

    @classmethod
    def from_task(cls, task: Union[str, Task], *, mode: str = "batch", ledger: Optional[str] = None,
                  api: ApiSettings = ApiSettings(), fields: FieldMap = FieldMap(),
                  run_id: Optional[str] = None, prices: Optional[str] = None,
                  max_cost_usd: Optional[float] = None, pack_size: int = DEFAULT_PACK_SIZE,
                  max_buffering_s: float = DEFAULT_MAX_BUFFERING_S,
                  messages: MessagesSettings = MessagesSettings(), poll: PollSettings = PollSettings(),
                  retry: RetryPolicy = RetryPolicy(), prompt_cache: bool = True,
                  injection_policy: str = "flag", injection_patterns: Optional[str] = None,
                  ) -> "ProcessWithClaude":
        """The transform for a task file (or a loaded Task), taking raw rows (dicts).

        ``ledger`` (a local path or gs:// prefix) is required in the batch
        modes: it is what makes a retried bundle or a rerun reuse a created
        batch instead of paying for it again. ``api`` says where to call
        (default: the real API, the key from ANTHROPIC_API_KEY on each worker,
        or ``ApiSettings(api_key_secret=...)``). ``fields`` names the id, text
        and pack-key fields of the rows. Everything is checked here, while the
        pipeline is built: an unknown mode, a batch mode without a ledger, a
        task file that does not load, a model without a price.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r} "
                             "(`auto` needs the planner: use `python -m pipeline`)")
        if mode in BATCH_MODES and not ledger:
            raise ValueError(f"mode {mode!r} needs a ledger (a local path or gs:// prefix): without "
                             "one, a retried bundle or a rerun would create and pay for its batches again")
        task = load_task(task) if isinstance(task, str) else task
        if fields is not None:  # the template may name the text and id by their input names
            task = task.with_overrides(text_field=fields.text_field, id_field=fields.id_field)
        table = load_prices(prices)
        table.price(task.model)  # a model without a price fails now, not on the first answer
        run_id = run_id or library_run_id(task, mode)
        builder = RequestBuilder(task=task, run_id=run_id, prompt_cache=prompt_cache,
                                 wire_schemas=wire_schemas(task))
        ctx = RowContext(run_id=run_id, mode=mode, model=task.model, prompt_sha256=task.prompt_sha256,
                         output_schema=task.output_schema, prices=table, max_cost_usd=max_cost_usd,
                         api_base=endpoint_provenance(api.base_url))
        settings = ProcessSettings(
            mode=mode, builder=builder, ctx=ctx, api=api, batch_bounds=BatchBounds(max_items=MAX_BATCH_REQUESTS, max_bytes=MAX_BATCH_BYTES), poll=poll,
            retry=retry, pack_size=pack_size, messages=messages,
            ledger=LedgerSettings(ledger) if ledger else None, max_buffering_s=max_buffering_s)
        return cls(settings, fields=fields, injection_policy=injection_policy,
                   injection_patterns=injection_patterns)

    def expand(self, pcoll):
        s = _for_input(self._s, bounded=pcoll.is_bounded)
        dead_parts = []
        records = pcoll
        if self._fields is not None:
            rows = pcoll | "Normalize" >> NormalizeRows(self._fields)
            screened = rows["records"] | "Screen" >> self._screen
            records = screened["records"]
            dead_parts += [rows["dead_letter"], screened["dead_letter"]]
        out = records | "Ask Claude" >> _AskClaude(s)
        run_id, mode = s.ctx.run_id, s.mode
        dead_rows = ((*dead_parts, out["dead_letter"])
                     | "Merge dead letters" >> beam.Flatten()
                     | "Dead letter rows" >> beam.Map(dead_letter_row, run_id, mode))
        return {"results": out["results"], "dead_letter": dead_rows}


def library_run_id(task: Task, mode: str) -> str:
    """A run id from what the requests depend on (task, model, mode), never the
    date: the same job rerun on any day gets the same custom_ids."""
    digest = hashlib.sha256(f"{task.prompt_sha256}|{task.model}|{mode}".encode()).hexdigest()
    return f"lib-{digest[:16]}"


def _for_input(s: ProcessSettings, bounded: bool) -> ProcessSettings:
    """The settings for a bounded or an unbounded input: only streaming input
    cuts packs and batches by time."""
    wait = None if bounded else (s.max_buffering_s or DEFAULT_MAX_BUFFERING_S)
    if wait == s.max_buffering_s and s.batch_bounds.max_buffering_s == wait:
        return s
    return dataclasses.replace(s, max_buffering_s=wait,
                               batch_bounds=dataclasses.replace(s.batch_bounds, max_buffering_s=wait))


class _AskClaude(beam.PTransform):
    """PCollection[Record] -> {'results': rows, 'dead_letter': DeadLetters}: the
    mode's route (Messages or Message Batches, packed or not)."""

    def __init__(self, settings: ProcessSettings):
        super().__init__()
        self._s = settings

    def expand(self, records):
        s = self._s
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
