"""Graph building: options -> a configured job -> the Beam graph. No I/O here
besides what Beam does when the pipeline runs."""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import tempfile
from typing import Dict, Optional

import apache_beam as beam

from pipeline import backend
from pipeline.options import ClaudeOptions, apply_run_date, run_date
from transforms.batches.route import PollSettings
from transforms.batching import BatchBounds
from transforms.api.client import ApiSettings, RetryPolicy, wire_schemas
from transforms.batches.route import CollectBatches
from transforms.api.costs import load_prices
from transforms.batches.lifecycle import LedgerSettings
from transforms.io.normalize import FieldMap
from transforms.prompts.outcomes import RowContext, dead_letter_row
from transforms.messages import MessagesSettings
from transforms.modes import BATCH_MODES
from transforms.process import ProcessSettings, ProcessWithClaude
from transforms.api.ratelimit import Limits
from transforms.io.pubsub import ReadPubSubRecords, to_json_bytes
from transforms.io.read import ReadRecords
from transforms.screen.injection import ScreenRecords
from transforms.io.sinks import WriteParquet, WriteWindowedParquet
from transforms.prompts.requests import RequestBuilder
from transforms.io.schema import DEAD_LETTER_SCHEMA, results_schema
from transforms.prompts.task import Task, load_task

#: Arrow bytes of result rows buffered before a Parquet row group is written.
#: Beam's default (64 MiB) holds ~90,000 of our wide rows, so memory grew with
#: the number of results; 16 MiB row groups (~20,000 rows) stay cheap to scan.
_ROW_GROUP_BYTES = 16 * 1024 * 1024
#: Poll quickly against the emulator, patiently against the real API.
_POLL_DEFAULTS = {True: (0.2, 2.0), False: (30.0, 300.0)}


@dataclasses.dataclass(frozen=True)
class Job:
    """A fully resolved job: what the graph is built from."""

    task: Task
    input: str
    input_format: Optional[str]
    output: str
    fields: FieldMap
    process: ProcessSettings
    lifecycle: str = "all"
    subscription: Optional[str] = None
    topic: Optional[str] = None
    id_attribute: Optional[str] = None
    window_secs: float = 60.0
    output_topic: Optional[str] = None
    dead_letter_topic: Optional[str] = None
    use_id_label: bool = True
    injection_policy: str = "flag"
    injection_patterns: Optional[str] = None

    @property
    def streaming(self) -> bool:
        return bool(self.subscription or self.topic)

    @property
    def run_id(self) -> str:
        return self.process.ctx.run_id

    @property
    def mode(self) -> str:
        return self.process.mode


def default_run_id(task: Task, input_pattern: str, mode: str, today: Optional[dt.date] = None) -> str:
    """Same job, same day -> same run id, so a scheduler's rerun reuses its custom_ids."""
    today = today or dt.datetime.now(dt.timezone.utc).date()
    digest = hashlib.sha256(f"{task.prompt_sha256}|{task.model}|{input_pattern}|{mode}".encode()).hexdigest()
    return f"{today:%Y%m%d}-{digest[:10]}"


def _deadline_at(opts: ClaudeOptions) -> Optional[float]:
    if not getattr(opts, "deadline", None):
        return None
    import time
    from transforms.planning import parse_deadline
    return time.time() + parse_deadline(opts.deadline)


def resolve_job(opts: ClaudeOptions, api_base: Optional[str], local: bool,
                runner_supports_id_label: bool = False) -> Job:
    """Options -> Job. Raises ValueError/TaskError with the flag or field at fault."""
    task = load_task(opts.task).with_overrides(model=opts.model, max_tokens=opts.max_tokens,
                                               text_field=opts.text_field, id_field=opts.id_field)
    prices = load_prices(opts.prices)
    prices.price(task.model)  # fail now, not on the first answer, when the model has no price
    apply_run_date(opts)  # {run_date} in --input/--output/--ledger (a no-op once run() applied it)
    day = run_date(opts)
    output = opts.output.rstrip("/")
    streaming = bool(opts.input_subscription or opts.input_topic)
    source = opts.input or opts.input_subscription or opts.input_topic
    run_id = opts.run_id or default_run_id(task, source, opts.mode, day)
    ledger = None
    # Works shed to the batch route are submitted through the ledger too.
    if opts.mode in BATCH_MODES or getattr(opts, "shed_to", "wait") == "batch":
        if opts.ledger:
            ledger = LedgerSettings(opts.ledger)
        elif local:
            # The in-process emulator forgets its batches when the run ends; a
            # ledger that outlived it would point a rerun at batches that no
            # longer exist. Its ledger lives exactly as long as it does.
            ledger = LedgerSettings(tempfile.mkdtemp(prefix="claude-ledger-"))
        else:
            ledger = LedgerSettings(f"{output}/_ledger")
    ctx = RowContext(run_id=run_id, mode=opts.mode, model=task.model,
                     prompt_sha256=task.prompt_sha256, output_schema=task.output_schema, prices=prices,
                     max_cost_usd=getattr(opts, "max_cost_usd", None),
                     deadline_at=_deadline_at(opts), api_base=backend.provenance(api_base, local))
    # The schemas as sent are transformed here, once, and travel with the builder.
    builder = RequestBuilder(task=task, run_id=run_id, prompt_cache=opts.prompt_cache,
                             cache_min_tokens=opts.prompt_cache_min_tokens, wire_schemas=wire_schemas(task))
    initial, longest = _POLL_DEFAULTS[local]
    poll = PollSettings(initial_s=opts.poll_interval_s or initial,
                        max_s=opts.poll_max_interval_s or longest,
                        timeout_s=opts.batch_timeout_s)
    process = ProcessSettings(
        mode=opts.mode, builder=builder, ctx=ctx,
        api=ApiSettings(base_url=api_base, use_emulator_key=local, timeout_s=opts.request_timeout_s,
                        api_key_secret=opts.api_key_secret),
        batch_bounds=BatchBounds(max_items=opts.max_requests_per_batch, max_bytes=opts.max_batch_bytes,
                                 max_buffering_s=opts.max_buffering_secs if streaming else None),
        max_buffering_s=opts.max_buffering_secs if streaming else None,
        batch_shards=opts.batch_shards, poll=poll, retry=RetryPolicy(max_attempts=opts.max_attempts),
        pack_size=opts.pack_size, pack_max_input_tokens=opts.pack_max_input_tokens,
        messages=MessagesSettings(
            concurrency=opts.concurrency, max_reasks=opts.max_reasks,
            limits=Limits(rpm=opts.rpm, itpm=opts.itpm, otpm=opts.otpm, rpd=opts.rpd),
            redis_url=opts.rate_limit_redis, max_in_flight=getattr(opts, "max_in_flight", None),
            shed_to=getattr(opts, "shed_to", "wait"), urgent_field=getattr(opts, "urgent_field", None)),
        ledger=ledger, lifecycle="submit" if opts.lifecycle == "submit" else "all")
    fields = FieldMap(id_field=opts.id_field, text_field=opts.text_field,
                      pack_key_field=opts.pack_key_field, max_text_bytes=opts.max_text_bytes)
    return Job(task=task, input=opts.input, input_format=opts.input_format,
               output=output, fields=fields, process=process, lifecycle=opts.lifecycle,
               subscription=opts.input_subscription, topic=opts.input_topic,
               id_attribute=opts.id_attribute, window_secs=opts.window_secs,
               output_topic=opts.output_topic, dead_letter_topic=opts.dead_letter_topic,
               use_id_label=runner_supports_id_label,
               injection_policy=opts.injection_policy, injection_patterns=opts.injection_patterns)


def build(p: beam.Pipeline, job: Job, open_batches=None) -> Dict[str, beam.PCollection]:
    """Adds the whole job to `p`; returns its results and dead-letter PCollections.

    lifecycle 'collect' reads no input: it collects `open_batches` (ledger key,
    batch id, requests file) and writes under a prefix of its own, so a later
    collect adds files beside the earlier ones and never rewrites them.
    """
    if job.streaming:
        return _build_streaming(p, job)
    if job.lifecycle == "collect":
        s = job.process
        out = p | "Collect recorded batches" >> CollectBatches(
            open_batches or [], s.api, s.builder, s.ctx, s.ledger, s.retry, s.messages.max_reasks, s.poll)
        results = out["results"]
        run_id, mode = job.run_id, job.mode
        dead_rows = out["dead_letter"] | "Dead letter rows" >> beam.Map(dead_letter_row, run_id, mode)
        prefix = "part-collect-" + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    else:
        read = p | "Read records" >> ReadRecords(job.input, job.fields, job.input_format)
        screened = read["records"] | "Screen records" >> ScreenRecords(job.injection_policy,
                                                                        job.injection_patterns)
        processed = screened["records"] | "Process with Claude" >> ProcessWithClaude(job.process)
        results = processed["results"]
        dead = ((read["dead_letter"], screened["dead_letter"])
                | "Input dead letters" >> beam.Flatten()
                | "Input dead letter rows" >> beam.Map(dead_letter_row, job.run_id, job.mode))
        dead_rows = (dead, processed["dead_letter"]) | "All dead letters" >> beam.Flatten()
        prefix = "part-submit" if job.lifecycle == "submit" else "part"
    results | "Write results" >> WriteParquet(
        f"{job.output}/results/{prefix}", results_schema(job.task.output_schema),
        file_name_suffix=".parquet", row_group_buffer_size=_ROW_GROUP_BYTES)
    dead_rows | "Write dead letters" >> WriteParquet(
        f"{job.output}/dead_letter/{prefix}", DEAD_LETTER_SCHEMA, file_name_suffix=".parquet")
    return {"results": results, "dead_letter": dead_rows}


def _build_streaming(p: beam.Pipeline, job: Job) -> Dict[str, beam.PCollection]:
    """Pub/Sub -> fixed windows -> the same processing -> Parquet per window (+ topics)."""
    read = p | "Read records" >> ReadPubSubRecords(job.fields, job.subscription, job.topic, job.id_attribute,
                                                   job.window_secs, job.use_id_label)
    screened = read["records"] | "Screen records" >> ScreenRecords(job.injection_policy, job.injection_patterns)
    processed = screened["records"] | "Process with Claude" >> ProcessWithClaude(job.process)
    results = processed["results"]
    dead = ((read["dead_letter"], screened["dead_letter"])
            | "Input dead letters" >> beam.Flatten()
            | "Input dead letter rows" >> beam.Map(dead_letter_row, job.run_id, job.mode))
    dead_rows = (dead, processed["dead_letter"]) | "All dead letters" >> beam.Flatten()
    results | "Write results" >> WriteWindowedParquet(
        f"{job.output}/results", results_schema(job.task.output_schema))
    dead_rows | "Write dead letters" >> WriteWindowedParquet(f"{job.output}/dead_letter", DEAD_LETTER_SCHEMA)
    if job.output_topic:
        (results | "Results as JSON" >> beam.Map(to_json_bytes)
         | "Publish results" >> beam.io.WriteToPubSub(job.output_topic))
    if job.dead_letter_topic:
        (dead_rows | "Dead letters as JSON" >> beam.Map(to_json_bytes)
         | "Publish dead letters" >> beam.io.WriteToPubSub(job.dead_letter_topic))
    return {"results": results, "dead_letter": dead_rows}
