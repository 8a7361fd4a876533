"""Command-line options of the job: one PipelineOptions subclass, help on every flag."""
from __future__ import annotations

import argparse
import datetime as dt
import re

from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.backend import LOCAL
from transforms.batching import MAX_BATCH_BYTES, MAX_BATCH_REQUESTS
from transforms.io.normalize import DEFAULT_MAX_TEXT_BYTES
from transforms.planning import BATCH_TYPICAL_S, DEFAULT_COUNT_CALLS, DEFAULT_LOCAL_PILOT, DEFAULT_SAMPLE
from transforms.io.read import FORMATS
from transforms.process import DEFAULT_PACK_MAX_INPUT_TOKENS, DEFAULT_PACK_SIZE
from transforms.prompts.requests import DEFAULT_CACHE_MIN_TOKENS
from transforms.modes import BATCH_MODES, CHOOSABLE
from transforms.api.shedding import SHED_TO



class ClaudeOptions(PipelineOptions):
    """Options of `python -m pipeline`. Beam's own flags (--runner, ...) pass through."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        first = len(parser._actions)
        job = parser.add_argument_group("job")
        job.add_argument("--task", required=False,
                         help="YAML task file (local or gs://): instructions, template, model, "
                              "max_tokens, output_schema. See samples/sentiment.yaml.")
        job.add_argument("--input", help="Input files: a glob, local or gs://, of JSONL, CSV or "
                                         "Parquet files (optionally .gz).")
        job.add_argument("--input-format", dest="input_format", choices=FORMATS, default=None,
                         help="Input format; default: from each file's extension.")
        job.add_argument("--output", help="Output directory (local or gs://); receives results/, "
                                          "dead_letter/ and summary.json.")
        job.add_argument("--overwrite", nargs="?", const=True, default=False, type=_flag_value,
                         metavar="true|false",
                         help="Replace the Parquet files of an earlier run in --output "
                              "(default: refuse, so no earlier result is lost by accident).")
        job.add_argument("--mode", choices=CHOOSABLE, default="batch",
                         help="How to ask Claude. sync: one Messages call per record (the "
                              "baseline). packed: many records of one pack key per Messages call "
                              "(instructions paid once per pack). batch: Message Batches API, one "
                              "record per request, 50%% of the list price. packed-batch: packs "
                              "inside Message Batches, the cheapest. auto: the cheapest mode whose "
                              "planned wall time meets --deadline (see `python -m pipeline plan`).")
        job.add_argument("--run-date", dest="run_date", default=None,
                         help="Logical date of the run (YYYY-MM-DD, default today in UTC), for "
                              "schedulers: part of the default run id, and substituted for "
                              "{run_date} in --input, --output and --ledger (date-partitioned paths).")
        job.add_argument("--run-id", dest="run_id", default=None,
                         help="Identifier of this run, in every row and in every custom_id. Default: "
                              "derived from the date, task, input and mode, so a rerun of the same "
                              "job gets the same id (and its batches can be reused).")

        fields = parser.add_argument_group("input fields")
        fields.add_argument("--id-field", dest="id_field", default="id",
                            help="Field holding each record's unique id (string or integer).")
        fields.add_argument("--text-field", dest="text_field", default="text",
                            help="Field holding the text to process; the task template may use "
                                 "other fields too.")
        fields.add_argument("--pack-key-field", dest="pack_key_field", default=None,
                            help="Field whose value is an identity boundary (e.g. customer_id): "
                                 "records with different values never share a prompt. Records "
                                 "without it are never packed with others.")
        fields.add_argument("--injection-policy", dest="injection_policy",
                            choices=("flag", "quarantine", "off"), default="flag",
                            help="Prompt-injection screening before anything is sent. flag: send, "
                                 "and list the matched patterns in injection_flags. quarantine: "
                                 "dead-letter as 'injection'. off: no screening.")
        fields.add_argument("--injection-patterns", dest="injection_patterns", default=None,
                            help="YAML pattern list replacing the maintained one "
                                 "(transforms/data/injection_patterns.yaml).")
        fields.add_argument("--max-text-bytes", dest="max_text_bytes", type=int,
                            default=DEFAULT_MAX_TEXT_BYTES,
                            help="Texts larger than this (UTF-8 bytes) go to the dead letter as "
                                 "text_too_large.")

        model = parser.add_argument_group("model (override the task file)")
        model.add_argument("--model", default=None, help="Model id, e.g. claude-haiku-4-5.")
        model.add_argument("--max-tokens", dest="max_tokens", type=int, default=None,
                           help="max_tokens of each single-record request.")
        model.add_argument("--no-prompt-cache", dest="prompt_cache", action="store_false", default=True,
                           help="Do not mark the shared instructions for prompt caching.")
        model.add_argument("--prompt-cache-min-tokens", dest="prompt_cache_min_tokens", type=int,
                           default=DEFAULT_CACHE_MIN_TOKENS,
                           help="Mark the instructions for caching only when at least this long "
                                "(the model's minimum cacheable prefix).")
        model.add_argument("--prices", default=None,
                           help="Price table YAML overriding the built-in one "
                                "(transforms/data/prices.yaml).")

        api = parser.add_argument_group("API")
        api.add_argument("--api-base", dest="api_base", default=None,
                         help=f"API base URL. '{LOCAL}' starts the bundled emulator in this process "
                              "(synthetic answers, no cost; rows say api_base=local-emulator). "
                              "Default: the real API, with the key from ANTHROPIC_API_KEY on each "
                              "worker or --api-key-secret (never from a flag). With neither a key "
                              "nor --api-base the job refuses to start (exit 2).")
        api.add_argument("--api-key-secret", dest="api_key_secret", default=None,
                         help="Secret Manager version holding the API key "
                              "(projects/P/secrets/S/versions/V), read by each worker at start-up. "
                              "Use this on Dataflow: pipeline options are visible in its UI.")
        api.add_argument("--request-timeout-s", dest="request_timeout_s", type=float, default=120.0,
                         help="Timeout of one HTTP call to the API.")
        api.add_argument("--max-attempts", dest="max_attempts", type=int, default=6,
                         help="Attempts per API call on retryable errors (429, 5xx, 529, timeouts).")

        batch = parser.add_argument_group("Message Batches")
        batch.add_argument("--max-requests-per-batch", dest="max_requests_per_batch", type=int,
                           default=MAX_BATCH_REQUESTS,
                           help=f"Requests per Message Batch (at most {MAX_BATCH_REQUESTS:,}).")
        batch.add_argument("--max-batch-bytes", dest="max_batch_bytes", type=int,
                           default=MAX_BATCH_BYTES,
                           help=f"Bytes of serialized requests per batch (at most {MAX_BATCH_BYTES:,}).")
        batch.add_argument("--batch-shards", dest="batch_shards", type=int, default=1,
                           help="Parallel batch builders. The API runs each batch in parallel "
                                "anyway; more shards only spread submission work over workers.")
        batch.add_argument("--poll-interval-s", dest="poll_interval_s", type=float, default=None,
                           help="First wait between batch status checks; grows 1.5x per check. "
                                "Default 30 s (0.2 s against the local emulator).")
        batch.add_argument("--poll-max-interval-s", dest="poll_max_interval_s", type=float, default=None,
                           help="Longest wait between status checks. Default 300 s (2 s locally).")
        batch.add_argument("--ledger", default=None,
                           help="Batch ledger directory (local or gs://): every submission is "
                                "recorded before it is created, so a retried bundle or a rerun "
                                "reuses its batch instead of paying twice. Default: "
                                "OUTPUT/_ledger. Use gs:// when several workers submit.")
        batch.add_argument("--lifecycle", choices=("all", "submit", "collect"), default="all",
                           help="all: create, wait and write results in one job. submit: create "
                                "and record the batches, then exit (no worker waits for hours). "
                                "collect: write the results of the run's ended batches; batches "
                                "still running are left for the next collect (exit code 75); a run "
                                "that was never submitted exits 2; one already collected exits 0 "
                                "and writes nothing.")
        batch.add_argument("--no-cancel-on-abort", dest="cancel_on_abort", action="store_false",
                           default=True,
                           help="On Ctrl-C or SIGTERM, leave this run's batches running (default: "
                                "cancel them and record them as cancelled).")
        batch.add_argument("--batch-timeout-s", dest="batch_timeout_s", type=float, default=25 * 3600.0,
                           help="Give up waiting on a batch after this long; its records go to the "
                                "dead letter as expired.")

        pack = parser.add_argument_group("packing (packed, packed-batch)")
        pack.add_argument("--pack-size", dest="pack_size", type=int, default=DEFAULT_PACK_SIZE,
                          help="Most records in one pack (also capped so the answer fits the "
                               "output budget: item_output_tokens of the task per record).")
        pack.add_argument("--pack-max-input-tokens", dest="pack_max_input_tokens", type=int,
                          default=DEFAULT_PACK_MAX_INPUT_TOKENS,
                          help="Most estimated input tokens of a pack's records; a larger "
                               "record goes alone.")
        pack.add_argument("--max-reasks", dest="max_reasks", type=int, default=2,
                          help="Times the ids a pack failed to answer (missing, invalid, "
                               "duplicated, truncated) are asked again: first in half packs, then "
                               "alone. Only failed ids are re-sent.")

        msgs = parser.add_argument_group("Messages API (sync, packed): concurrency and rate limits")
        msgs.add_argument("--concurrency", type=int, default=8,
                          help="Calls in flight per worker process (a 529 halves it for a while).")
        msgs.add_argument("--rpm", type=int, default=None,
                          help="Requests per minute of the account for this model. Default: "
                               "learned from the API's anthropic-ratelimit-* headers.")
        msgs.add_argument("--itpm", type=int, default=None,
                          help="Input tokens per minute (cache reads excluded). Default: from headers.")
        msgs.add_argument("--otpm", type=int, default=None,
                          help="Output tokens per minute. Default: from headers.")
        msgs.add_argument("--rpd", type=int, default=None,
                          help="Requests per day, when the account has such a limit (no header "
                               "reports it).")
        msgs.add_argument("--rate-limit-redis", dest="rate_limit_redis", default=None,
                          help="redis://host:port[/db]: share one rate-limit budget among all "
                               "workers (default: one budget per worker process).")
        msgs.add_argument("--max-in-flight", dest="max_in_flight", type=int, default=None,
                          help="Most records admitted to a worker process's Messages queue and not "
                               "yet answered. Default: 4 x --concurrency x records per request "
                               "(--pack-size for packed).")
        msgs.add_argument("--shed-to", dest="shed_to", choices=SHED_TO, default="wait",
                          help="Load shedding, for records that would join a full queue "
                               "(--max-in-flight) or that the rate limits project to be sent after "
                               "--deadline. wait (default): shed nothing, wait for room "
                               "(backpressure). batch: send them through the Message Batches API "
                               "instead (their rows show mode batch and a batch_id). dead-letter: "
                               "write them to the dead letter as 'shed', saying why.")
        msgs.add_argument("--urgent-field", dest="urgent_field", default=None,
                          help="Input field marking urgent records (true, 1, yes...): they are "
                               "never shed, they wait. Every other record may be shed.")

        stream = parser.add_argument_group("streaming (Pub/Sub)")
        stream.add_argument("--input-subscription", dest="input_subscription", default=None,
                            help="Read records from this Pub/Sub subscription "
                                 "(projects/P/subscriptions/S) instead of --input; runs as a "
                                 "streaming job.")
        stream.add_argument("--input-topic", dest="input_topic", default=None,
                            help="Read from this topic (projects/P/topics/T) through a temporary "
                                 "subscription.")
        stream.add_argument("--id-attribute", dest="id_attribute", default=None,
                            help="Message attribute holding the record id (default: the payload's "
                                 "--id-field). Also Dataflow's id_label for deduplication.")
        stream.add_argument("--window-secs", dest="window_secs", type=float, default=60.0,
                            help="Fixed window length: output files are written per window, "
                                 "under window-START-END/ directories.")
        stream.add_argument("--max-buffering-secs", dest="max_buffering_secs", type=float, default=5.0,
                            help="A pack or a batch waits at most this long (processing time) "
                                 "for more records before it is sent.")
        stream.add_argument("--output-topic", dest="output_topic", default=None,
                            help="Also publish each result row (JSON with provenance) here.")
        stream.add_argument("--dead-letter-topic", dest="dead_letter_topic", default=None,
                            help="Also publish each dead-letter row (JSON) here.")
        stream.add_argument("--streaming-duration-s", dest="streaming_duration_s", type=float,
                            default=None,
                            help="Stop the streaming job after this many seconds (demos, tests); "
                                 "default: run until cancelled.")

        _add_plan_arguments(parser)

        local = parser.add_argument_group("local emulator (with --api-base local)")
        local.add_argument("--emulator-batch-delay-s", dest="emulator_batch_delay_s", type=float,
                           default=0.0, help="Seconds a batch stays in_progress in the emulator.")
        _accept_dest_spellings(parser, parser._actions[first:])


def _add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of planning, deadline and budget (for ClaudeOptions._add_argparse_args)."""
    group = parser.add_argument_group("plan, deadline and budget (`python -m pipeline plan ...`)")
    group.add_argument("--deadline", default=None,
                       help="When the job must be done: seconds (3600, 90m, 2h, 1h30m), an ISO time "
                            "(2026-11-26T09:00:00Z) or HH:MM (the next such local time). The plan says "
                            "which modes meet it; --mode auto picks the cheapest that does.")
    group.add_argument("--max-cost-usd", dest="max_cost_usd", type=float, default=None,
                       help="Budget of the run in USD. The job is planned first (input read, "
                            "count_tokens); when the planned cost of the mode to run exceeds this "
                            "it exits with code 3 and sends nothing (any mode). During the run each "
                            "request's worst case is reserved before it is sent, so the real spend "
                            "never passes it: records past the cap go to the dead letter as 'budget'.")
    group.add_argument("--allow-partial-budget", dest="allow_partial_budget", nargs="?", const=True,
                       default=False, type=_flag_value, metavar="true|false",
                       help="With --max-cost-usd and a plan over it: run anyway, send records until "
                            "the cap is reached and dead-letter the rest as 'budget' (exit code 0). "
                            "Without this flag such a run exits with code 3 before sending anything.")
    group.add_argument("--plan-sample", dest="plan_sample", type=int, default=DEFAULT_SAMPLE,
                       help="Records the plan reads and builds requests for; larger inputs are "
                            "counted in full and the plan is scaled to their row count.")
    group.add_argument("--plan-sampling", dest="plan_sampling", choices=("auto", "first", "random"),
                       default="auto",
                       help="How a larger input is sampled. first: the first rows (fast; the rest "
                            "are only counted). random: whole pack keys drawn at random (reads "
                            "every row; packs are planned as full as they will be). auto: random "
                            "with --pack-key-field, else first.")
    group.add_argument("--plan-pilot", dest="plan_pilot", type=int, default=None,
                       help="Records to really send (alone and in packs) to measure output tokens. "
                            f"Default {DEFAULT_LOCAL_PILOT} against the local emulator (free), 0 "
                            "against the real API (then the task's item_output_tokens is assumed).")
    group.add_argument("--plan-count-calls", dest="plan_count_calls", type=int,
                       default=DEFAULT_COUNT_CALLS,
                       help="Most count_tokens calls the plan makes (0: use the local estimator).")
    group.add_argument("--plan-batch-typical-s", dest="plan_batch_typical_s", type=float,
                       default=BATCH_TYPICAL_S,
                       help="Expected turnaround of a Message Batch (the API's bound is 24 h).")


def _flag_value(text: str) -> bool:
    """The value of a boolean flag given as --name=value (how Flex Templates pass parameters)."""
    low = str(text).strip().lower()
    if low in ("true", "yes", "1"):
        return True
    if low in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def _accept_dest_spellings(parser: argparse.ArgumentParser, actions) -> None:
    """Also accept every flag as --<dest>[=value]: --input_format=csv, --prompt_cache=false.
    Dataflow passes options by dest name (Flex Template parameters, like Beam's
    own --temp_location). Hidden from --help."""
    for action in list(actions):
        alias = f"--{action.dest}"
        if alias in parser._option_string_actions or not action.option_strings:
            continue
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            parser.add_argument(alias, dest=action.dest, type=_flag_value, nargs="?", const=True,
                                default=action.default, help=argparse.SUPPRESS)
        else:
            parser.add_argument(alias, dest=action.dest, type=action.type, choices=action.choices,
                                default=action.default, help=argparse.SUPPRESS)


def help_parser() -> argparse.ArgumentParser:
    """A parser for --help that lists our flags (Beam's PipelineOptions hides them)."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Run records through Claude at the lowest cost the API allows; write every "
                    "answer, with its provenance, to Parquet.",
        epilog="Any other flag goes to Apache Beam, e.g. --runner DataflowRunner --project P "
               "--region R --temp_location gs://B/tmp, or --direct_num_workers 2.")
    ClaudeOptions._add_argparse_args(parser)
    return parser


#: Flags whose value may hold {run_date} (date-partitioned paths for schedulers).
DATED_FLAGS = ("input", "output", "ledger")


def run_date(opts: ClaudeOptions) -> dt.date:
    """The run's logical date: --run-date, default today in UTC."""
    if opts.run_date:
        return dt.date.fromisoformat(opts.run_date)
    return dt.datetime.now(dt.timezone.utc).date()


def apply_run_date(opts: ClaudeOptions) -> None:
    """Substitute {run_date} in --input, --output and --ledger, in place,
    before anything reads them."""
    day = run_date(opts).isoformat()
    for name in DATED_FLAGS:
        value = getattr(opts, name, None)
        if value and "{run_date}" in value:
            setattr(opts, name, value.replace("{run_date}", day))


def validate(opts: ClaudeOptions) -> None:
    """Fail early, with the flag's name, before any worker starts."""
    streaming = bool(opts.input_subscription or opts.input_topic)
    if opts.input_subscription and opts.input_topic:
        raise ValueError("give only one of --input-subscription and --input-topic")
    if streaming and opts.input:
        raise ValueError("give either --input (files) or a Pub/Sub source, not both")
    for name in ("task", "output") + (() if streaming else ("input",)):
        if not getattr(opts, name):
            raise ValueError(f"--{name} is required" + ("" if name != "input" else
                             " (or --input-subscription / --input-topic for streaming)"))
    if streaming and opts.lifecycle != "all":
        raise ValueError("--lifecycle submit/collect is for file inputs")
    if opts.window_secs <= 0 or opts.max_buffering_secs <= 0:
        raise ValueError("--window-secs and --max-buffering-secs must be > 0")
    if not 1 <= opts.max_requests_per_batch <= MAX_BATCH_REQUESTS:
        raise ValueError(f"--max-requests-per-batch must be within 1..{MAX_BATCH_REQUESTS}")
    if not 1024 <= opts.max_batch_bytes <= MAX_BATCH_BYTES:
        raise ValueError(f"--max-batch-bytes must be within 1024..{MAX_BATCH_BYTES}")
    if opts.batch_shards < 1:
        raise ValueError("--batch-shards must be >= 1")
    if opts.max_text_bytes < 1:
        raise ValueError("--max-text-bytes must be >= 1")
    if opts.max_attempts < 1:
        raise ValueError("--max-attempts must be >= 1")
    if opts.max_tokens is not None and opts.max_tokens < 1:
        raise ValueError("--max-tokens must be >= 1")
    for name in ("pack_size", "pack_max_input_tokens", "concurrency"):
        if getattr(opts, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if opts.max_reasks < 0:
        raise ValueError("--max-reasks must be >= 0")
    for name in ("rpm", "itpm", "otpm", "rpd"):
        value = getattr(opts, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1")
    if getattr(opts, "shed_to", "wait") != "wait" and opts.mode in BATCH_MODES:
        raise ValueError(f"--shed-to {opts.shed_to} applies to --mode sync and packed (the Messages "
                         f"route); in --mode {opts.mode} nothing waits on the rate limiter")
    if opts.lifecycle != "all" and opts.mode not in BATCH_MODES:
        raise ValueError("--lifecycle submit/collect needs --mode batch or packed-batch")
    if opts.lifecycle != "all" and opts.api_base == LOCAL:
        raise ValueError(f"--lifecycle {opts.lifecycle} cannot use --api-base {LOCAL}: the bundled emulator "
                         "lives only as long as one command, so a later collect would find none of the "
                         "submitted batches. To try the scheduler flow locally, start one in another "
                         "terminal (python -m emulator --port 8787) and pass --api-base "
                         "http://127.0.0.1:8787 to both submit and collect")
    if opts.run_date and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", opts.run_date):
        raise ValueError("--run-date must be YYYY-MM-DD")
    if opts.api_key_secret and not re.fullmatch(r"projects/[^/]+/secrets/[^/]+/versions/[^/]+",
                                                 opts.api_key_secret):
        raise ValueError("--api-key-secret must look like projects/P/secrets/S/versions/V")
    if opts.rate_limit_redis and not opts.rate_limit_redis.startswith(("redis://", "rediss://")):
        raise ValueError("--rate-limit-redis must be a redis:// URL")
    if opts.max_in_flight is not None and opts.max_in_flight < 1:
        raise ValueError("--max-in-flight must be >= 1")


def unknown_flags_problem(options: PipelineOptions) -> "str | None":
    """A message naming the first flag that no PipelineOptions class knows (ours
    or Beam's), with the closest known spelling; None when every flag is known.

    Beam decides what it cannot parse in PipelineOptions.get_all_options: it
    builds one parser from every PipelineOptions subclass and keeps what
    parse_known_args leaves over, then logs "Discarding unparseable args" and
    runs without them (a misspelt --max-cost-usd would mean no budget at all).
    We ask for that same parser (through add_extra_args_fn) and parse the same
    flags with it, so "known" means exactly what it means to Beam."""
    import difflib

    import logging
    from apache_beam.options import pipeline_options as beam_options

    parsers = []
    quiet = lambda record: "unparseable" not in record.getMessage()  # noqa: E731 - we say it better
    beam_log = logging.getLogger(beam_options.__name__)
    beam_log.addFilter(quiet)
    try:
        options.get_all_options(add_extra_args_fn=parsers.append)
    finally:
        beam_log.removeFilter(quiet)
    parser = parsers[0]
    _, unknown = parser.parse_known_args(options._flags)  # what Beam would discard
    if not unknown:
        return None
    known = [s for action in parser._actions for s in action.option_strings if s.startswith("--")]
    flags = [u for u in unknown if u.startswith("-")]
    if not flags:
        return f"unexpected argument {unknown[0]!r} (every value follows its --flag)"
    name = flags[0].split("=", 1)[0]
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" (did you mean {close[0]}?)" if close else ""
    more = f"; also unknown: {', '.join(f.split('=', 1)[0] for f in flags[1:])}" if flags[1:] else ""
    return (f"unknown flag {name}{hint}{more}. `python -m pipeline --help` lists ours; "
            "any Apache Beam pipeline option is accepted too")
