"""`python -m pipeline plan`: the planner's command-line face, and the run's plan step.

    python -m pipeline plan --task T --input I [any flag of the job]

prints what the job would cost and how long it would take in every mode (see
transforms/planning for how the numbers are made) and exits 0, 2 (bad usage)
or 3 (the requested mode, or the one --mode auto would choose, is over
--max-cost-usd). Against the bundled emulator (--api-base local) a small pilot
is sent by default, since it costs nothing.
"""
from __future__ import annotations

import os
import sys
from typing import Any, List, Optional, Tuple

from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import backend
from pipeline.options import ClaudeOptions, apply_run_date, help_parser, unknown_flags_problem
from transforms.api.costs import PriceError
from transforms.planning import (Plan, budget_problem, choose_mode, format_duration, plan,
                                 render_plan, validate_plan_options)
from transforms.prompts.task import TaskError

__all__ = ["EXIT_OVER_BUDGET", "plan_command", "plan_before_run"]

EXIT_OK = 0
EXIT_USAGE = 2
#: Exit code of `plan` (and of a run) when the plan exceeds --max-cost-usd.
EXIT_OVER_BUDGET = 3


def plan_command(argv: List[str], out=None, err=None) -> int:
    """`python -m pipeline plan ...`: print the plan; exit 0, 2 or 3."""
    out = out or sys.stdout
    err = err or sys.stderr
    if "-h" in argv or "--help" in argv:
        parser = help_parser()
        parser.prog = "python -m pipeline plan"
        parser.print_help(out)
        return EXIT_OK
    options = PipelineOptions(argv)
    problem = unknown_flags_problem(options)
    if problem:
        print(f"error: {problem}", file=err)
        return EXIT_USAGE
    opts = options.view_as(ClaudeOptions)
    try:
        if not opts.task or not opts.input:
            raise ValueError("--task and --input are required")
        apply_run_date(opts)
        backend.check_backend(opts, os.environ)
        deadline_s = validate_plan_options(opts)
    except ValueError as e:
        print(f"error: {e}", file=err)
        return EXIT_USAGE
    from pipeline.preflight import load_and_check, no_valid_record_message
    try:
        load_and_check(opts)  # the task file, the template's fields, an input with no valid record
    except (ValueError, TaskError, OSError) as e:
        print(f"error: {e}", file=err)
        return EXIT_USAGE
    with backend.endpoint(opts) as api_base:
        try:
            p = plan(opts, api_base, opts.api_base == backend.LOCAL, deadline_s=deadline_s)
        except (ValueError, TaskError, PriceError, OSError) as e:
            print(f"error: {e}", file=err)
            return EXIT_USAGE
    print(render_plan(p), file=out)
    if not p.records:
        print(f"error: {no_valid_record_message(opts.input, p.rows_total, p.dead_letters_by_reason)}",
              file=err)
        return EXIT_USAGE
    mode = opts.mode or "batch"
    if mode == "auto":
        mode, why = choose_mode(p, deadline_s)
        print(f"\n  --mode auto would run: {mode} ({why})", file=out)
    else:
        print(f"\n  --mode {mode}: ${p.modes[mode].cost_usd:,.4f}, expected "
              f"{format_duration(p.modes[mode].wall_s)}", file=out)
    problem = budget_problem(p, mode, opts.max_cost_usd)
    if problem:
        print(f"error: {problem}", file=err)
        print(f"  {problem}", file=out)
        return EXIT_OVER_BUDGET
    return EXIT_OK


def plan_before_run(opts: Any, api_base: Optional[str], local: bool, *, always: bool = False,
                    err=None, refuse_over_budget: bool = True) -> Tuple[Optional[Plan], Optional[int]]:
    """For run.py, once the endpoint is known and before the job is resolved.

    When --mode auto, --deadline or --max-cost-usd is given (or `always`):
    plan; resolve `auto` into opts.mode; print the plan and the choice to
    stderr (not when only `always` asked for it). Returns (plan or None, exit
    code to stop with, or None to go on): 2 bad flag, 3 over budget.

    No pilot unless --plan-pilot asks for one: the pilot's calls would go to
    the job's own API (or emulator) and be billed there.
    """
    err = err or sys.stderr
    mode = opts.mode or "batch"
    asked = mode == "auto" or opts.deadline is not None or opts.max_cost_usd is not None
    if not asked and not always:
        return None, None
    try:
        deadline_s = validate_plan_options(opts)
    except ValueError as e:
        print(f"error: {e}", file=err)
        return None, EXIT_USAGE
    p = plan(opts, api_base, local, deadline_s=deadline_s, pilot=opts.plan_pilot or 0)
    if asked:
        print(render_plan(p), file=err)
    if mode == "auto":
        mode, why = choose_mode(p, deadline_s)
        opts.mode = mode
        print(f"  --mode auto: running {mode} ({why})", file=err)
    elif deadline_s is not None and not p.modes[mode].meets_deadline:
        print(f"warning: {mode} is expected to take {format_duration(p.modes[mode].wall_s)}, past the "
              f"deadline (in {format_duration(deadline_s)})", file=err)
    problem = budget_problem(p, mode, opts.max_cost_usd)
    if problem and refuse_over_budget:
        print(f"error: {problem}; nothing was sent", file=err)
        return p, EXIT_OVER_BUDGET
    if problem:
        print(f"warning: {problem}; the run stops sending at the cap and dead-letters the rest "
              "as 'budget'", file=err)
    return p, None
