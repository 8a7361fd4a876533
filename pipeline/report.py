"""The run report: one self-contained HTML page (inline CSS and SVG, no script,
no external asset) that a person can open from the output directory, mail or
archive: the headline numbers, cost per mode (planned, and this run's actual),
throughput over time and dead letters by reason. `render_table` says the same
in text for a terminal."""
from __future__ import annotations

import datetime as dt
import html
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from transforms.modes import BATCH_MODES, MODES

__all__ = ["write_report", "render_report", "render_table", "read_timeline", "bucket_timeline",
           "savings_vs_sync"]

#: Bucket widths of the throughput chart, in seconds: the smallest giving <= MAX_BUCKETS.
_STEPS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
          21600, 43200, 86400)
MAX_BUCKETS = 48

_CSS = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 color:#0f172a;background:#f1f5f9}
main{max-width:1120px;margin:0 auto;padding:28px 28px 40px}
header{display:flex;align-items:baseline;gap:14px;flex-wrap:wrap;margin-bottom:18px}
h1{font-size:24px;margin:0;font-weight:650}
h2{font-size:15px;margin:0 0 10px;font-weight:600;color:#1e293b}
.badge{display:inline-block;padding:2px 10px;border-radius:999px;background:#1d4ed8;color:#fff;
 font-size:12px;font-weight:600;letter-spacing:.02em}
.ok{background:#15803d}.bad{background:#b91c1c}
.muted{color:#64748b}.small{font-size:12px}
.cards{display:grid;grid-template-columns:repeat(6,1fr);gap:12px;margin-bottom:18px}
.card{background:#fff;border-radius:10px;padding:14px 16px;box-shadow:0 1px 2px rgba(15,23,42,.08)}
.card .label{font-size:12px;color:#64748b;text-transform:uppercase;letter-spacing:.04em}
.card .value{font-size:26px;font-weight:650;margin-top:2px;white-space:nowrap}
.card .sub{font-size:12px;color:#64748b;margin-top:2px}
.card.good .value{color:#15803d}.card.warn .value{color:#b45309}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:14px}
.panel{background:#fff;border-radius:10px;padding:16px 18px;box-shadow:0 1px 2px rgba(15,23,42,.08)}
.wide{grid-column:1 / span 2}
svg{display:block;width:100%;height:auto}
svg text{font:12px -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Arial,sans-serif;fill:#334155}
svg .axis{stroke:#cbd5e1;stroke-width:1}
svg .grid{stroke:#e2e8f0;stroke-width:1}
svg .planned{fill:#cbd5e1}
svg .planned.run{fill:#93c5fd}
svg .actual{fill:#1d4ed8}
svg .tp{fill:#38bdf8}
svg .cumulative{fill:none;stroke:#1e3a8a;stroke-width:2}
svg .dead{fill:#f97316}
svg .value{font-weight:600;fill:#0f172a}
svg .cheap{fill:#15803d;font-weight:600}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{text-align:right;padding:6px 10px;border-bottom:1px solid #e2e8f0}
th:first-child,td:first-child{text-align:left}
th{font-size:12px;color:#64748b;font-weight:600;text-transform:uppercase;letter-spacing:.03em}
tr.run td{background:#eff6ff;font-weight:600}
.legend{display:flex;gap:16px;font-size:12px;color:#475569;margin-top:6px}
.sw{display:inline-block;width:11px;height:11px;border-radius:2px;vertical-align:-1px;margin-right:5px}
footer{margin-top:18px;font-size:12px;color:#64748b}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px}
"""


# ---------------------------------------------------------------------------
# Numbers


def _fmt_duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _money(usd: Optional[float]) -> str:
    if usd is None:
        return "-"
    if abs(usd) >= 100:
        return f"${usd:,.0f}"
    if abs(usd) >= 1:
        return f"${usd:,.2f}"
    return f"${usd:,.4f}"


def _plan_of(summary: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    plan = summary.get("plan")
    if plan is None:
        return None
    if hasattr(plan, "to_dict"):
        plan = plan.to_dict()
    return dict(plan) if isinstance(plan, Mapping) and plan.get("modes") else None


def savings_vs_sync(summary: Mapping[str, Any]) -> Tuple[Optional[float], Optional[float], str]:
    """(saved USD, saved fraction, what it is compared with).

    With a plan: the planned cost of `sync` (every record alone, list prices)
    against this run's real cost. Without one: for a batch mode, the list price
    of this run's own requests (the batch discount undone); otherwise unknown.
    """
    cost = float(summary.get("cost_usd") or 0.0)
    plan = _plan_of(summary)
    if summary.get("mode") == "batch" and cost > 0:
        # Exact, no plan needed: sync sends the very same requests at list price.
        from transforms.api.costs import load_prices
        listed = cost / load_prices().batch_discount
        return listed - cost, (listed - cost) / listed, "vs sync: the same requests at list prices"
    if plan and "sync" in plan["modes"] and summary.get("mode") != "sync":
        # The plan priced every record; only the records answered count, so a
        # run stopped by its budget does not claim savings on work it never did.
        planned = plan["modes"]["sync"]
        answered = int(summary.get("results") or 0)
        per_record = float(planned["cost_usd"]) / planned["records"] if planned.get("records") else 0.0
        sync = per_record * answered
        if sync > 0:
            return (sync - cost, (sync - cost) / sync,
                    f"vs sync as planned (not measured) for the {answered:,} records answered")
    if summary.get("mode") == "sync":
        return 0.0, 0.0, "this run is the sync baseline"
    if summary.get("mode") in BATCH_MODES:
        try:
            from transforms.api.costs import load_prices
            discount = load_prices().batch_discount
        except Exception:  # noqa: BLE001 - the default table is part of the package
            discount = 0.5
        if discount > 0 and cost > 0:
            listed = cost / discount
            return listed - cost, (listed - cost) / listed, "vs the same requests at list prices (no plan)"
    return None, None, "no plan to compare with"


# ---------------------------------------------------------------------------
# Timeline


def _epoch(value: Any) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.timestamp()
    if isinstance(value, str):
        text = value[:-1] + "+00:00" if value.endswith("Z") else value
        try:
            return _epoch(dt.datetime.fromisoformat(text))
        except ValueError:
            return None
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    return None


def read_timeline(output_dir: str) -> Tuple[List[float], Optional[float]]:
    """(completed_at of every result row, earliest submitted_at), epoch seconds,
    read column by column from output_dir/results/*.parquet."""
    from apache_beam.io.filesystems import FileSystems
    import pyarrow.parquet as pq
    times: List[float] = []
    first: Optional[float] = None
    try:
        files = sorted(m.path for m in FileSystems.match([f"{output_dir}/results/*.parquet"])[0].metadata_list)
    except Exception:  # noqa: BLE001 - no results directory: no timeline
        return times, first
    for path in files:
        with FileSystems.open(path) as f:
            pf = pq.ParquetFile(f)
            names = [c for c in ("completed_at", "submitted_at") if c in pf.schema_arrow.names]
            if "completed_at" not in names:
                continue
            for batch in pf.iter_batches(columns=names):
                times.extend(_epochs(batch.column(names.index("completed_at"))))
                if "submitted_at" in names:
                    earliest = min(_epochs(batch.column(names.index("submitted_at"))), default=None)
                    if earliest is not None and (first is None or earliest < first):
                        first = earliest
    return times, first


def _epochs(column: Any) -> List[float]:
    """_epoch of every non-null value of an Arrow column; timestamp columns
    (what the product writes) as integers, not one datetime per row."""
    import pyarrow as pa
    if pa.types.is_timestamp(column.type):
        per_second = {"s": 1, "ms": 10 ** 3, "us": 10 ** 6, "ns": 10 ** 9}[column.type.unit]
        # A naive timestamp is read as UTC by _epoch too; the division equals datetime.timestamp().
        return [v / per_second for v in column.cast(pa.int64()).to_pylist() if v is not None]
    return [t for t in (_epoch(v) for v in column.to_pylist()) if t is not None]


def bucket_timeline(times: Sequence[Any], max_buckets: int = MAX_BUCKETS, start: Optional[float] = None
                    ) -> Tuple[float, float, List[int]]:
    """(start epoch, bucket width s, counts per bucket) of completion times,
    from `start` (default: the first completion)."""
    ts = sorted(t for t in (_epoch(v) for v in times) if t is not None)
    if not ts:
        return 0.0, 1.0, []
    start = ts[0] if start is None or start > ts[0] else start
    span = ts[-1] - start
    width = next((s for s in _STEPS if span / s < max_buckets), _STEPS[-1])
    n = max(1, int(span // width) + 1)
    counts = [0] * n
    for t in ts:
        counts[min(n - 1, int((t - start) // width))] += 1
    return start, width, counts


# ---------------------------------------------------------------------------
# SVG charts


def _ticks(value: float, most: int = 5, integer: bool = False) -> Tuple[float, float, int]:
    """(axis top, tick step, ticks): a 1-2-5 step with at most `most` steps up to the top."""
    if value <= 0:
        return 1.0, 0.25, 4
    exp = 10 ** math.floor(math.log10(value / most))
    if integer:
        exp = max(1, exp)
    mults = (1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)
    step = next(m * exp for m in mults if value / (m * exp) <= most)
    n = max(1, math.ceil(value / step - 1e-9))
    return n * step, step, n


def _axis_money(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 2
    return f"${value:,.{min(decimals, 6)}f}"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def cost_chart(summary: Mapping[str, Any]) -> str:
    """Horizontal bars: planned cost of each mode; this run's actual cost under its mode."""
    plan = _plan_of(summary)
    mode = summary.get("mode")
    actual = float(summary.get("cost_usd") or 0.0)
    rows: List[Tuple[str, str, float, str]] = []  # (label, css class, value, note)
    planned = {}
    if plan:
        planned = {m: float(v["cost_usd"]) for m, v in plan["modes"].items()}
    cheapest = min(planned, key=planned.get) if planned else None
    for m in MODES if planned else ():
        if m not in planned:
            continue
        note = "cheapest" if m == cheapest else ""
        rows.append((m, "bar planned run" if m == mode else "bar planned", planned[m], note))
        if m == mode:
            rows.append(("actual", "bar actual", actual, ""))
    if not planned:
        rows.append((f"{mode} (actual)", "bar actual", actual, ""))
    if mode not in planned and planned:
        rows.append((f"{mode} actual", "bar actual", actual, ""))
    width, left, right, bar_h, gap, top = 560, 110, 92, 22, 8, 6
    height = top + len(rows) * (bar_h + gap) + 22
    scale_max, step, n_ticks = _ticks(max([v for _, _, v, _ in rows] + [1e-9]))
    plot = width - left - right
    parts = [f'<svg id="chart-cost" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="Cost per mode">']
    for k in range(n_ticks + 1):
        x = left + plot * k / n_ticks
        parts.append(f'<line class="grid" x1="{x:.1f}" y1="{top - 2}" x2="{x:.1f}" y2="{height - 20}"/>')
        parts.append(f'<text x="{x:.1f}" y="{height - 5}" text-anchor="middle" class="small">'
                     f'{_e(_axis_money(step * k, step))}</text>')
    y = top
    for label, cls, value, note in rows:
        w = max(1.5, plot * value / scale_max) if value > 0 else 0
        is_actual = "actual" in cls
        label_cls = ' class="value"' if is_actual else ""
        parts.append(f'<text x="{left - 10}" y="{y + bar_h / 2 + 4:.1f}" text-anchor="end"'
                     f'{label_cls}>{_e(label)}</text>')
        parts.append(f'<rect class="{cls}" data-mode="{_e(mode if is_actual else label)}" x="{left}" '
                     f'y="{y}" width="{w:.1f}" height="{bar_h}" rx="3"><title>{_e(label)}: '
                     f'{_e(_money(value))}</title></rect>')
        parts.append(f'<text class="value" x="{left + w + 6:.1f}" y="{y + bar_h / 2 + 4:.1f}">'
                     f'{_e(_money(value))}</text>')
        if note:
            parts.append(f'<text class="cheap" x="{left + w + 6 + 8 * len(_money(value)):.1f}" '
                         f'y="{y + bar_h / 2 + 4:.1f}">{_e(note)}</text>')
        y += bar_h + gap
    parts.append(f'<line class="axis" x1="{left}" y1="{top - 2}" x2="{left}" y2="{height - 20}"/>')
    parts.append("</svg>")
    return "".join(parts)


def throughput_chart(times: Sequence[Any], start: Optional[float] = None) -> str:
    """Results completed per time bucket (bars) and their running total (line),
    from `start` (the first submission, when known)."""
    from_submit = start is not None
    start, width_s, counts = bucket_timeline(times, start=start)
    width, height, left, right, top, bottom = 1060, 240, 56, 60, 14, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    parts = [f'<svg id="chart-throughput" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="Throughput over time">']
    if not counts:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="muted">'
                     "no completed results</text></svg>")
        return "".join(parts)
    y_max, y_step, y_ticks = _ticks(max(counts), most=6, integer=True)
    total = sum(counts)
    n = len(counts)
    slot = plot_w / n
    for k in range(y_ticks + 1):
        y = top + plot_h - plot_h * k / y_ticks
        parts.append(f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}"/>')
        parts.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{y_step * k:,.0f}</text>')
    for k in range(5):  # running total, right axis, in quarters of the total
        y = top + plot_h - plot_h * k / 4
        parts.append(f'<text x="{left + plot_w + 8}" y="{y + 4:.1f}" fill="#1e3a8a">'
                     f'{total * k / 4:,.0f}</text>')
    for i, c in enumerate(counts):
        h = plot_h * c / y_max
        x = left + i * slot + max(0.5, slot * 0.12)
        parts.append(f'<rect class="bar tp" x="{x:.1f}" y="{top + plot_h - h:.1f}" '
                     f'width="{max(1.0, slot * 0.76):.1f}" height="{h:.1f}"><title>'
                     f'{_e(_fmt_duration(i * width_s))}: {c:,} results</title></rect>')
    running, points = 0, [f"M{left:.1f},{top + plot_h:.1f}"]
    for i, c in enumerate(counts):
        running += c
        points.append(f"L{left + (i + 1) * slot:.1f},{top + plot_h - plot_h * running / total:.1f}")
    parts.append(f'<path class="cumulative" d="{" ".join(points)}"/>')
    every = max(1, math.ceil(n / 8))
    for i in range(0, n + 1, every):
        x = left + i * slot
        parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle">'
                     f'{_e(_fmt_duration(i * width_s))}</text>')
    parts.append(f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" '
                 f'y2="{top + plot_h}"/>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 2}" text-anchor="middle" class="muted">'
                 f'time since the {"first request was sent" if from_submit else "first result"} (bars: results per {_e(_fmt_duration(width_s))}; '
                 'line: running total, right axis)</text>')
    parts.append("</svg>")
    return "".join(parts)


def dead_letter_chart(reasons: Mapping[str, int]) -> str:
    """One horizontal bar per dead-letter reason, largest first."""
    items = sorted(((k, int(v)) for k, v in (reasons or {}).items() if v), key=lambda kv: (-kv[1], kv[0]))
    return hbar_chart("chart-dead", "Dead letters by reason", items, "dead",
                      "no dead letters: every record has a result")


def hbar_chart(chart_id: str, label: str, items: Sequence[Tuple[str, int]], cls: str, empty: str) -> str:
    """Horizontal bars, one per (label, count), in the order given. Labels get
    the room their longest one needs, so none is clipped."""
    items = [(str(k), int(v)) for k, v in items]
    if not items:
        return (f'<svg id="{_e(chart_id)}" viewBox="0 0 560 60" role="img" aria-label="{_e(label)}">'
                f'<text x="280" y="34" text-anchor="middle" fill="#15803d">{_e(empty)}</text></svg>')
    left = min(320, 24 + 7 * max(len(k) for k, _ in items))  # ~7 px per character at 12 px
    width, right, bar_h, gap, top = 560 + max(0, left - 150), 50, 18, 7, 6
    height = top + len(items) * (bar_h + gap) + 20
    plot = width - left - right
    x_max = _ticks(max(v for _, v in items) or 1, integer=True)[0]
    parts = [f'<svg id="{_e(chart_id)}" viewBox="0 0 {width} {height}" role="img" aria-label="{_e(label)}">']
    y = top
    for key, n in items:
        w = max(1.5, plot * n / x_max)
        parts.append(f'<text x="{left - 10}" y="{y + bar_h / 2 + 4:.1f}" text-anchor="end">{_e(key)}</text>')
        parts.append(f'<rect class="bar {cls}" data-reason="{_e(key)}" x="{left}" y="{y}" '
                     f'width="{w:.1f}" height="{bar_h}" rx="3"><title>{_e(key)}: {n:,}</title></rect>')
        parts.append(f'<text class="value" x="{left + w + 6:.1f}" y="{y + bar_h / 2 + 4:.1f}">{n:,}</text>')
        y += bar_h + gap
    parts.append(f'<line class="axis" x1="{left}" y1="{top - 2}" x2="{left}" y2="{height - 14}"/>')
    parts.append("</svg>")
    return "".join(parts)


def answers_panels(answers: Mapping[str, Any]) -> str:
    """Panels for what the answers say: each short field's values, each
    number's histogram (or its range), the injection flags, dead-letter examples."""
    panels = []
    for name, values in (answers.get("values") or {}).items():
        panels.append(f'<div class="panel"><h2>Answers: {_e(name)}</h2>'
                      + hbar_chart(f"chart-answer-{name}", f"Answers: {name}", list(values.items()), "tp",
                                   "no answer") + "</div>")
    for name, s in (answers.get("numbers") or {}).items():
        hist = s.get("histogram")
        if hist:
            step = (hist["high"] - hist["low"]) / len(hist["counts"])
            items = [(f"{hist['low'] + i * step:.2g} to {hist['low'] + (i + 1) * step:.2g}", n)
                     for i, n in enumerate(hist["counts"])]
            body = hbar_chart(f"chart-answer-{name}", f"Answers: {name}", items, "tp", "no answer")
        else:
            body = ""
        panels.append(f'<div class="panel"><h2>Answers: {_e(name)}</h2>{body}<p class="small muted">'
                      f'{s["count"]:,} answers, mean {s["mean"]:,.2f}, min {s["min"]:,.2f}, max {s["max"]:,.2f}'
                      '</p></div>')
    injection = answers.get("injection") or {}
    flagged = int(injection.get("flagged_records") or 0)
    panels.append('<div class="panel"><h2>Injection flags</h2>'
                  + hbar_chart("chart-injection", "Injection flags by pattern",
                               list((injection.get("by_pattern") or {}).items()), "dead",
                               "no record matched an injection pattern")
                  + f'<p class="small muted">{flagged:,} answered records matched a pattern '
                    '(<code>injection_flags</code> in <code>results/</code>).</p></div>')
    examples = answers.get("dead_letter_examples") or {}
    if examples:
        rows = "".join(f"<tr><td>{_e(reason)}</td><td><code>{_e(ex.get('record_id') or '(no id)')}</code></td>"
                       f"<td style=\"text-align:left\">{_e(ex.get('error_message', ''))}</td></tr>"
                       for reason, exs in examples.items() for ex in exs)
        panels.append('<div class="panel wide"><h2>Dead letters: examples</h2><table><thead><tr><th>reason'
                      f'</th><th>record</th><th style="text-align:left">message</th></tr></thead><tbody>{rows}</tbody></table></div>')
    return "".join(panels)


# ---------------------------------------------------------------------------
# Page


def _card(label: str, value: str, sub: str = "", cls: str = "") -> str:
    return (f'<div class="card {cls}"><div class="label">{_e(label)}</div>'
            f'<div class="value">{_e(value)}</div><div class="sub">{_e(sub)}</div></div>')


def _tokens_table(summary: Mapping[str, Any]) -> str:
    plan = _plan_of(summary)
    mode = summary.get("mode")
    cols = [("input_tokens", "input"), ("cache_creation_input_tokens", "cache write"),
            ("cache_read_input_tokens", "cache read"), ("output_tokens", "output"), ("cost_usd", "cost")]
    head = "".join(f"<th>{_e(label)}</th>" for _, label in cols)
    rows = []
    if plan:
        for m in MODES:
            p = plan["modes"].get(m)
            if not p:
                continue
            cells = "".join(f"<td>{_money(p[k]) if k == 'cost_usd' else f'{int(p[k]):,}'}</td>" for k, _ in cols)
            wall = _fmt_duration(p.get("wall_s"))
            rows.append(f'<tr class="{"run" if m == mode else ""}"><td>{_e(m)} (planned)</td>{cells}'
                        f'<td>{_e(wall)}</td></tr>')
    cells = "".join(f"<td>{_money(summary.get(k)) if k == 'cost_usd' else f'{int(summary.get(k) or 0):,}'}</td>"
                    for k, _ in cols)
    rows.append(f'<tr class="run"><td>{_e(mode)} (actual)</td>{cells}'
                f'<td>{_e(_fmt_duration(summary.get("wall_time_s")))}</td></tr>')
    note = ""
    if plan and mode in plan["modes"]:
        planned = float(plan["modes"][mode]["cost_usd"])
        actual = float(summary.get("cost_usd") or 0)
        if planned > 0:
            note = (f'<p class="small muted">Planned {_money(planned)}, actual {_money(actual)} '
                    f'({(actual - planned) / planned * 100:+.1f}%). Output tokens: '
                    f'{_e(plan.get("output_source", ""))}. Input tokens: {_e(plan.get("token_source", ""))}.</p>')
    return (f"<table><thead><tr><th>tokens</th>{head}<th>wall time</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>{note}")


def render_report(summary: Mapping[str, Any], timeline: Optional[Sequence[Any]] = None,
                  started: Optional[float] = None) -> str:
    """The HTML page for a summary, completion times (epoch seconds, datetimes
    or ISO strings) and the time the first request was sent (if known)."""
    times = list(timeline or [])
    mode = summary.get("mode", "?")
    records = int(summary.get("records_in") or 0)
    results = int(summary.get("results") or 0)
    dead = int(summary.get("dead_letters") or 0)
    cost = float(summary.get("cost_usd") or 0.0)
    saved, frac, versus = savings_vs_sync(summary)
    ok = bool(summary.get("one_in_one_out"))
    plan = _plan_of(summary)
    per_record = cost / results if results else 0.0
    cards = [
        _card("records in", f"{records:,}", "rows read from the input"),
        _card("results", f"{results:,}", f"{results / records * 100:.1f}% of records" if records else ""),
        _card("dead letters", f"{dead:,}", f"{len(summary.get('dead_letters_by_reason') or {})} reasons",
              "warn" if dead else "good"),
        _card("cost", _money(cost), f"{_money(per_record * 1000)} per 1,000 results" if results else ""),
        (_card("saved", "-", "sync is the baseline: every record alone, list prices")
         if mode == "sync" else
         _card("saved", _money(saved) if saved is not None else "n/a",
               (f"{frac * 100:.0f}% {versus}" if frac is not None else versus), "good" if saved else "")),
        _card("wall time", _fmt_duration(summary.get("wall_time_s")),
              f"{results / summary['wall_time_s']:,.1f} results/s" if summary.get("wall_time_s") else ""),
    ]
    legend = ('<div class="legend"><span><i class="sw" style="background:#cbd5e1"></i>planned</span>'
              '<span><i class="sw" style="background:#93c5fd"></i>planned, this mode</span>'
              '<span><i class="sw" style="background:#1d4ed8"></i>actual</span></div>') if plan else \
        '<p class="small muted">No plan in the summary: only this run\'s cost is shown.</p>'
    created = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    tp_note = ('<p class="small muted" style="margin:-6px 0 8px">Message Batches return every result '
               'of a batch when it ends: the wait, then a step per batch.</p>'
               if mode in BATCH_MODES else "")
    model = summary.get("model") or (plan or {}).get("model")
    model = f" &middot; {_e(model)}" if model else ""
    origin = " &middot; ".join(f"{k} <code>{_e(summary[k])}</code>" for k in ("task", "input") if summary.get(k))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Run report {_e(summary.get('run_id', ''))}</title>
<style>{_CSS}</style></head>
<body><main>
<header><h1>Run report</h1><span class="badge">{_e(mode)}</span>
<span class="badge {'ok' if ok else 'bad'}">{'one in, one out' if ok else 'ROWS MISSING OR REPEATED'}</span>
<span class="muted">{_e(summary.get('run_id', ''))}{model} &middot; generated {created}</span>
<p class="small muted">{origin}</p></header>
<section class="cards">{''.join(cards)}</section>
<section class="grid">
<div class="panel"><h2>Cost per mode</h2>{cost_chart(summary)}{legend}</div>
<div class="panel"><h2>Dead letters by reason</h2>{dead_letter_chart(summary.get('dead_letters_by_reason') or {})}
<p class="small muted">Every input row is a result or a dead letter with its reason, in
<code>dead_letter/</code>.</p></div>
<div class="panel wide"><h2>Throughput over time</h2>{tp_note}{throughput_chart(times, _epoch(started))}</div>
<div class="panel wide"><h2>Tokens and cost</h2>{_tokens_table(summary)}</div>
{answers_panels(summary.get("answers") or {})}
</section>
<footer>Output: <code>{_e(summary.get('output', ''))}/results</code>,
<code>{_e(summary.get('output', ''))}/dead_letter</code>, <code>summary.json</code>.
Batches created: {int(summary.get('batches_created') or 0):,}.</footer>
</main></body></html>
"""


def write_report(output_dir: str, summary: Mapping[str, Any], timeline: Optional[List[Any]] = None) -> str:
    """Write `output_dir/report.html` (local or gs://); returns its path. The
    timeline defaults to the completed_at of every row in output_dir/results."""
    from apache_beam.io.filesystems import FileSystems
    output_dir = output_dir.rstrip("/")
    started = None
    if timeline is None:
        timeline, started = read_timeline(output_dir)
    page = render_report(summary, timeline, started)
    path = f"{output_dir}/report.html"
    with FileSystems.create(path, mime_type="text/html") as f:
        f.write(page.encode("utf-8"))
    return path


def render_table(summary: Mapping[str, Any]) -> str:
    """The report as text, for a terminal."""
    saved, frac, versus = savings_vs_sync(summary)
    lines = [f"run {summary.get('run_id', '')} ({summary.get('mode')})",
             f"  records in      {int(summary.get('records_in') or 0):>12,}",
             f"  results         {int(summary.get('results') or 0):>12,}",
             f"  dead letters    {int(summary.get('dead_letters') or 0):>12,}"]
    for reason, n in sorted((summary.get("dead_letters_by_reason") or {}).items(), key=lambda kv: -kv[1]):
        lines.append(f"    {reason:<24}{n:>8,}")
    lines += [f"  one in, one out {'yes' if summary.get('one_in_one_out') else 'NO - see summary.json':>12}",
              f"  cost            {_money(summary.get('cost_usd')):>12}",
              f"  saved           {(_money(saved) if saved is not None else 'n/a'):>12}"
              + (f"  ({frac * 100:.0f}% {versus})" if frac is not None else f"  ({versus})"),
              f"  wall time       {_fmt_duration(summary.get('wall_time_s')):>12}"]
    plan = _plan_of(summary)
    if plan:
        lines.append("")
        lines.append(f"  {'mode':<14}{'planned':>12}{'actual':>12}{'diff':>9}  {'planned wall':<14}")
        for m in MODES:
            p = plan["modes"].get(m)
            if not p:
                continue
            actual = diff = ""
            if m == summary.get("mode"):
                a = float(summary.get("cost_usd") or 0)
                actual = _money(a)
                diff = f"{(a - p['cost_usd']) / p['cost_usd'] * 100:+.1f}%" if p["cost_usd"] else ""
            lines.append(f"  {m:<14}{_money(p['cost_usd']):>12}{actual:>12}{diff:>9}  "
                         f"{_fmt_duration(p.get('wall_s')):<14}")
    return "\n".join(lines)
