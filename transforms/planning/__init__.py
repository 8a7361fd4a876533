"""The planner: what a job will cost and how long it will take, in every mode, before it runs.

A library (the job's own normalizer, request builder, packing and price
table, plus the API's count_tokens); `python -m pipeline plan` and the run's
budget and `--mode auto` checks are thin callers of it.
"""
from transforms.planning.deadline import format_duration, parse_deadline
from transforms.planning.model import (BATCH_TYPICAL_S, DEFAULT_COUNT_CALLS, DEFAULT_LOCAL_PILOT,
                                       DEFAULT_SAMPLE, Assumptions, ModePlan, Plan)
from transforms.planning.planner import budget_problem, choose_mode, plan, validate_plan_options
from transforms.planning.render import render_plan
from transforms.planning.sample import count_rows

__all__ = ["Assumptions", "ModePlan", "Plan", "plan", "choose_mode", "budget_problem", "render_plan",
           "validate_plan_options", "parse_deadline", "format_duration", "count_rows",
           "BATCH_TYPICAL_S", "DEFAULT_COUNT_CALLS", "DEFAULT_LOCAL_PILOT", "DEFAULT_SAMPLE"]
