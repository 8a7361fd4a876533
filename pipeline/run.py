"""Entry point: parse options, start the local emulator when asked, run, summarize.

Exit codes (for schedulers): 0 done; 1 the job failed or broke its
one-in-one-out promise; 2 bad usage (a flag, the task file, the input);
3 the planned cost is over --max-cost-usd (nothing was sent); 75 collect ran
but batches are still running (collect again later); 130 aborted."""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import threading
import time
from typing import Dict, List, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline import summary as summary_mod
from pipeline.build import Job, build, resolve_job
from pipeline import backend
from pipeline.options import ClaudeOptions, apply_run_date, help_parser, unknown_flags_problem, validate
from transforms.api.client import API_KEY_ENV
from transforms.api.costs import PriceError
from transforms.progress import ProgressLine
from transforms.prompts.task import TaskError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
#: collect ran, but some batches have not ended yet: run collect again later
#: (EX_TEMPFAIL from sysexits.h, which schedulers treat as "retry later").
EXIT_PENDING = 75
EXIT_ABORTED = 130

_LOG = logging.getLogger("pipeline")


def _check_paths(job: Job, overwrite: bool) -> None:
    if job.streaming:
        return  # windows write new files; nothing to check up front
    matched = FileSystems.match([job.input])[0].metadata_list
    if not matched:
        raise ValueError(f"--input {job.input!r} matches no file")
    if job.lifecycle == "collect":
        return  # collect adds files beside the submit job's; it never replaces any
    for sub in ("results", "dead_letter"):
        existing = FileSystems.match([f"{job.output}/{sub}/*.parquet"])[0].metadata_list
        if existing and not overwrite:
            raise ValueError(f"{job.output}/{sub} already holds Parquet files from an earlier run; "
                             "choose another --output or pass --overwrite")
        if existing:
            FileSystems.delete([m.path for m in existing])


class _Aborted(Exception):
    """SIGTERM or Ctrl-C while the job ran."""


#: How often a signal whose abort has not started yet is delivered again.
_SIGNAL_REPEAT_S = 0.5


@contextlib.contextmanager
def _abort_on_signals():
    """Turn SIGTERM (a scheduler's or Dataflow's stop) into the same path as Ctrl-C.

    The handler raises _Aborted on the main thread wherever it happens to be;
    when that is inside a callback whose exceptions Python ignores (a weakref
    callback run by the garbage collector, a __del__), the raise is lost. So
    the first signal also starts a daemon thread that delivers it again to the
    main thread every _SIGNAL_REPEAT_S until the abort is under way."""
    main = threading.main_thread().ident
    received, underway = threading.Event(), threading.Event()
    repeater: List[threading.Thread] = []

    def repeat(signum):
        while not underway.wait(_SIGNAL_REPEAT_S):
            signal.pthread_kill(main, signum)

    def handler(signum, frame):
        if not received.is_set():
            received.set()
            repeater.append(threading.Thread(target=repeat, args=(signum,), name="repeat-signal", daemon=True))
            repeater[0].start()
        raise _Aborted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    except KeyboardInterrupt as e:
        underway.set()
        raise _Aborted("SIGINT") from e
    except _Aborted:
        underway.set()
        raise
    finally:
        underway.set()
        for thread in repeater:
            thread.join()  # no repeat after the handlers of before are back
        for sig, old in previous.items():
            signal.signal(sig, old)


def _cancel_run_batches(job: Job) -> int:
    """Cancel the batches this run started that have not ended; record them as cancelled."""
    from transforms.batches import ledger as ledger_mod
    from transforms.api.client import make_client
    if job.process.ledger is None:
        return 0
    ledger = job.process.ledger.open()
    client = make_client(job.process.api)
    cancelled = 0
    try:
        for entry in ledger.list(run_id=job.run_id, states=(ledger_mod.CREATED,)):
            try:
                client.messages.batches.cancel(entry.batch_id)
                ledger.update(entry, state=ledger_mod.CANCELLED)
                cancelled += 1
            except Exception as e:  # noqa: BLE001 - cancel what can be cancelled, report the rest
                print(f"warning: could not cancel batch {entry.batch_id}: {type(e).__name__}", file=sys.stderr)
    finally:
        client.close()
    return cancelled


def _start_as_daemon(p: beam.Pipeline):
    """p.run(), called on a daemon thread: the threads the runner starts for the
    job inherit that (a thread made by a daemon thread is a daemon unless told
    otherwise), so a cancelled DirectRunner streaming job whose threads do not
    stop (the Pub/Sub reader) cannot keep the interpreter from exiting."""
    started: Dict[str, object] = {}

    def start():
        try:
            started["result"] = p.run()
        except BaseException as e:  # noqa: BLE001 - raised again on the calling thread
            started["error"] = e

    thread = threading.Thread(target=start, name="start-streaming-job", daemon=True)
    thread.start()
    thread.join()
    if "error" in started:
        raise started["error"]
    return started["result"]


def _run_streaming(options: PipelineOptions, job: Job, duration_s: Optional[float]) -> int:
    """Run until cancelled (or for duration_s); output lands per window as it is written."""
    p = beam.Pipeline(options=options)
    build(p, job)
    print(f"streaming run {job.run_id}: writing windows of {job.window_secs:g} s under "
          f"{job.output}/results and {job.output}/dead_letter", flush=True)
    result = None
    try:
        with _abort_on_signals():
            result = _start_as_daemon(p)
            if duration_s:
                # The DirectRunner's wait_until_finish takes no duration: sleep, then cancel.
                time.sleep(duration_s)
            else:
                result.wait_until_finish()
    except _Aborted as e:
        print(f"stopped by {e}", file=sys.stderr)
    if result is not None:
        try:
            result.cancel()
        except Exception:  # noqa: BLE001 - already stopped
            pass
    return EXIT_OK


def _open_batches(job: Job):
    from transforms.batches.lifecycle import open_entries
    ledger = job.process.ledger.open()
    return [(e.key, e.batch_id, e.extra.get("requests")) for e in open_entries(ledger, job.run_id)]


def _mark_collected(job: Job) -> None:
    from transforms.batches import ledger as ledger_mod
    ledger = job.process.ledger.open()
    for entry in ledger.list(run_id=job.run_id, states=(ledger_mod.ENDED,)):
        try:
            ledger.update(entry, state=ledger_mod.COLLECTED)
        except ledger_mod.LedgerConflict:
            pass


def _counters(result) -> Dict[str, int]:
    totals: Dict[str, int] = {}
    try:
        counters = result.metrics().query(MetricsFilter().with_namespace("claude"))["counters"]
    except (NotImplementedError, KeyError):
        return totals
    for c in counters:
        value = c.committed if c.committed is not None else c.attempted
        totals[c.key.metric.name] = totals.get(c.key.metric.name, 0) + int(value or 0)
    return totals


def run(argv: List[str]) -> int:
    if argv and argv[0] == "plan":
        from pipeline.plan import plan_command
        return plan_command(argv[1:])
    if "-h" in argv or "--help" in argv:
        help_parser().print_help()
        return EXIT_OK
    options = PipelineOptions(argv)
    problem = unknown_flags_problem(options)
    if problem:  # Beam would drop it and run without it: no budget, no pack key...
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    opts = options.view_as(ClaudeOptions)
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    try:
        validate(opts)
        apply_run_date(opts)
        backend.check_backend(opts, os.environ)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    # File access outside the pipeline (input check, summary, ledger files) uses
    # the same options as the pipeline (credentials, --no_auth, project).
    FileSystems.set_options(options)
    local = opts.api_base == backend.LOCAL
    if local and "Direct" not in runner:
        print("error: the local emulator runs inside this process; a remote runner cannot reach it. "
              f"Set {API_KEY_ENV} on the workers or pass --api-base URL.", file=sys.stderr)
        return EXIT_USAGE

    with contextlib.ExitStack() as stack:
        api_base = stack.enter_context(backend.endpoint(opts))
        the_plan = None
        if opts.lifecycle != "collect" and not (opts.input_subscription or opts.input_topic):
            from pipeline.plan import plan_before_run
            from pipeline.preflight import load_and_check
            try:
                # Before anything is sent: the task file, the template's fields
                # against the first valid record, an input with no valid record.
                load_and_check(opts)
                # Planned only when the run needs it (--mode auto, --deadline,
                # --max-cost-usd): a plan reads the input and calls count_tokens,
                # start-up work no other run should pay for. Over --max-cost-usd
                # every mode refuses up front (exit 3), unless
                # --allow-partial-budget: then it runs up to the cap (enforced per
                # request) and dead-letters the rest as 'budget'.
                the_plan, stop = plan_before_run(opts, api_base, local,
                                                 refuse_over_budget=not opts.allow_partial_budget)
            except (ValueError, TaskError, PriceError, OSError) as e:
                print(f"error: {e}", file=sys.stderr)
                return EXIT_USAGE
            if stop is not None:
                return stop
        try:
            job = resolve_job(opts, api_base, local, runner_supports_id_label="Direct" not in runner)
            if local and not opts.ledger and job.process.ledger is not None:
                # The in-process emulator's ledger holds full prompts (customer
                # text) and means nothing once the emulator stops: never left behind.
                stack.callback(shutil.rmtree, job.process.ledger.path, ignore_errors=True)
            _check_paths(job, opts.overwrite)
        except (ValueError, TaskError, PriceError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE

        open_batches = None
        if job.lifecycle == "collect":
            open_batches = _open_batches(job)
            if not open_batches:
                if job.process.ledger.open().read_manifest(job.run_id) is None:
                    print(f"error: run {job.run_id} was never submitted to {job.process.ledger.path}: "
                          "run the same flags with --lifecycle submit first (or check --run-date, "
                          "--run-id and --ledger, which name the run)", file=sys.stderr)
                    return EXIT_USAGE
                print(f"run {job.run_id}: every batch was already collected; its rows are under "
                      f"{job.output}: nothing to do")
                return EXIT_OK
        started = time.monotonic()
        if job.streaming:
            options.view_as(StandardOptions).streaming = True
            return _run_streaming(options, job, opts.streaming_duration_s)
        p = beam.Pipeline(options=options)
        build(p, job, open_batches)
        try:
            with _abort_on_signals(), ProgressLine(total=the_plan.records if the_plan else None):
                result = p.run()
                if options.view_as(StandardOptions).no_wait_until_finish:
                    # A Flex Template launcher must not wait for the job it starts.
                    try:
                        jid = result.job_id()
                    except Exception:  # noqa: BLE001 - template and dry runs have no job id
                        jid = None
                    print(f"launched run {job.run_id}" + (f" as job {jid}" if jid else "")
                          + "; not waiting (--no_wait_until_finish): no summary.json")
                    return EXIT_OK
                state = result.wait_until_finish()
        except _Aborted as e:
            print(f"aborted by {e}", file=sys.stderr)
            if opts.cancel_on_abort and job.lifecycle == "all":
                n = _cancel_run_batches(job)
                print(f"cancelled {n} batch(es) of run {job.run_id}; to finish, run the same command "
                      "again: what the API already answered is collected, and only the cancelled "
                      "items are sent again (once)", file=sys.stderr)
            return EXIT_ABORTED
        if state not in (None, "DONE", beam.runners.runner.PipelineState.DONE):
            print(f"error: pipeline ended in state {state}", file=sys.stderr)
            return EXIT_FAILED
        counters = _counters(result)
        if job.lifecycle == "submit":
            job.process.ledger.open().write_manifest(job.run_id, {
                "run_id": job.run_id, "mode": job.mode, "output": job.output,
                "records_read": counters.get("records_read", 0),
                "batches_created": counters.get("batches_created", 0),
                "batches_reused": counters.get("batches_reused", 0)})
            print(f"submitted run {job.run_id}: {counters.get('batches_created', 0)} batch(es) created, "
                  f"{counters.get('batches_reused', 0)} reused; collect later with the same flags and "
                  "--lifecycle collect")
            return EXIT_OK
        if job.lifecycle == "collect":
            _mark_collected(job)
            manifest = job.process.ledger.open().read_manifest(job.run_id) or {}
            counters["records_read"] = manifest.get("records_read", counters.get("records_read", 0))
        summary = summary_mod.summarize(job.output, job.run_id, job.mode, counters,
                                        time.monotonic() - started, job.task.output_schema)
        summary.update(model=job.task.model, task=opts.task, input=job.input)
        summary["batches_pending"] = counters.get("batches_pending", 0)
        if the_plan is not None:
            summary["plan"] = the_plan.to_dict()
        path = summary_mod.write(summary, job.output)
        print(summary_mod.render(summary))
        print(f"  summary         {path}")
        from pipeline.report import write_report
        print(f"  report          {write_report(job.output, summary)}")
        pending = counters.get("batches_pending", 0)
        if pending:
            print(f"{pending} batch(es) have not ended yet: run collect again later", file=sys.stderr)
            return EXIT_PENDING
        from pipeline.preflight import INPUT_REASONS, no_valid_record_message
        by_reason = summary["dead_letters_by_reason"]
        if not summary["results"] and not any(n for k, n in by_reason.items() if k not in INPUT_REASONS):
            print(f"error: {no_valid_record_message(job.input, summary['records_in'], by_reason)}",
                  file=sys.stderr)
            return EXIT_FAILED
        if not summary["one_in_one_out"]:
            print("error: the output does not hold exactly one row per input record", file=sys.stderr)
            return EXIT_FAILED
    return EXIT_OK


def main(argv: Optional[List[str]] = None) -> int:
    """The command: its exit code (python -m pipeline exits with it)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    return run(argv)
