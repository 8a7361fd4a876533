"""The plan rendered for a person: what was read, how it was counted, every mode side by side."""

from __future__ import annotations

from typing import List

from transforms.planning.deadline import format_duration
from transforms.planning.model import Plan


def render_plan(plan: Plan) -> str:
    """The plan for a person: what was read, how it was counted, every mode side by side."""
    a = plan.assumptions
    lines = [f"plan: {plan.task} on {plan.input}",
             f"  model {plan.model}, price table {plan.price_table}"]
    if plan.sampling == "all":
        lines.append(f"  input rows      {plan.rows_total:>10,}  (all read)")
    else:
        how = "the first rows" if plan.sampling == "first" else "rows of randomly drawn pack keys"
        lines.append(f"  input rows      {plan.rows_total:>10,}  (sample: {plan.rows_sampled:,} rows, {how}; "
                     f"counts scaled x{plan.scale:,.2f})")
    lines.append(f"  records         {plan.records:>10,}")
    lines.append(f"  dead letters    {plan.dead_letters:>10,}  (not sent, not billed)")
    for reason, n in plan.dead_letters_by_reason.items():
        lines.append(f"    {reason:<22}{n:>8,}")
    wrap = lambda label, text: _wrap(f"  {label:<16}", text)  # noqa: E731
    lines += wrap("input tokens", plan.token_source)
    lines += wrap("output tokens", plan.output_source)
    lines += wrap("prompt cache", plan.cache_note)
    lines += wrap("rate limits", f"{a.rpm:,} RPM, {a.itpm:,} ITPM, {a.otpm:,} OTPM ({a.limits_source}); "
                                 f"--concurrency {a.concurrency}")
    if a.local:
        lines += wrap("timing", "local emulator: no simulated latency; batches end after "
                                "--emulator-batch-delay-s (+ polling)")
    else:
        lines += wrap("timing", f"{a.latency_s:.1f} s per call + {a.output_tokens_per_s:.0f} output "
                                f"tokens/s; batches: typically {format_duration(a.batch_typical_s)}, "
                                f"at most {format_duration(a.batch_bound_s)}")
    if plan.deadline_s is not None:
        lines.append(f"  deadline        in {format_duration(plan.deadline_s)}")
    if plan.max_cost_usd is not None:
        lines.append(f"  budget          ${plan.max_cost_usd:,.4f} (--max-cost-usd)")
    lines.append("")
    head = (f"  {'mode':<13}{'requests':>10}{'input':>12}{'cache write':>13}{'cache read':>13}"
            f"{'output':>11}{'cost':>11}  {'wall time':<22}")
    if plan.deadline_s is not None:
        head += f"{'deadline':<10}"
    lines.append(head)
    cheapest = plan.cheapest().mode
    sync_cost = plan.modes["sync"].cost_usd if "sync" in plan.modes else None
    for m in plan.modes.values():
        wall = format_duration(m.wall_s)
        if m.batch and m.wall_bound_s > m.wall_s:
            wall = f"~{wall} (<= {format_duration(m.wall_bound_s)})"
        row = (f"  {m.mode:<13}{m.requests:>10,}{m.input_tokens:>12,}{m.cache_creation_input_tokens:>13,}"
               f"{m.cache_read_input_tokens:>13,}{m.output_tokens:>11,}{_money(m.cost_usd):>11}  {wall:<22}")
        if plan.deadline_s is not None:
            row += f"{'meets' if m.meets_deadline else 'MISSES':<10}"
        marks = []
        if m.mode == cheapest:
            marks.append("cheapest")
        if sync_cost and m.mode != "sync" and sync_cost > 0:
            marks.append(f"-{(1 - m.cost_usd / sync_cost) * 100:.0f}% vs sync")
        if m.over_budget:
            marks.append("OVER BUDGET")
        lines.append(row + ", ".join(marks))
    if plan.pilot_cost_usd and not a.local:
        lines.append(f"  (the pilot itself cost ${plan.pilot_cost_usd:,.4f})")
    for note in plan.notes:
        lines += _wrap("  note: ", note)
    return "\n".join(lines)


def _money(usd: float) -> str:
    return f"${usd:,.4f}" if usd < 100 else f"${usd:,.2f}"


def _wrap(prefix: str, text: str, width: int = 100) -> List[str]:
    import textwrap
    return textwrap.wrap(text, width=width, initial_indent=prefix,
                         subsequent_indent=" " * len(prefix)) or [prefix.rstrip()]
