"""The run report: a self-contained page whose charts are drawn, checked in the
HTML (bars and paths per chart) and in a headless Chromium screenshot."""
from __future__ import annotations

import datetime as dt
import html.parser
import json
import os
import shutil
import subprocess
import tempfile

import pytest

from transforms import planning as P
from pipeline import report as R
from pipeline.run import EXIT_OK, run

CHROMIUM = "/usr/bin/chromium"
TASK = "samples/sentiment.yaml"
SAMPLE = "samples/emails.jsonl"


class _Svg(html.parser.HTMLParser):
    """Per SVG id: its rects by class and its paths; plus every external reference."""

    def __init__(self):
        super().__init__()
        self.charts = {}
        self.current = None
        self.external = []
        self.tags = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        for key in ("src", "href", "xlink:href"):
            if a.get(key):
                self.external.append(a[key])
        if tag == "svg":
            self.current = a.get("id")
            self.charts[self.current] = {"rect": [], "path": []}
        elif tag in ("rect", "path") and self.current:
            self.charts[self.current][tag].append(a)

    def handle_endtag(self, tag):
        if tag == "svg":
            self.current = None


def _parse(page: str) -> _Svg:
    parser = _Svg()
    parser.feed(page)
    return parser


def _bars(chart, cls=None):
    return [r for r in chart["rect"] if "bar" in r.get("class", "").split()
            and (cls is None or cls in r.get("class", "").split())]


# ---------------------------------------------------------------------------
# Pure rendering


SUMMARY = {
    "run_id": "20261125-abc", "mode": "batch", "records_in": 1000, "results": 990, "dead_letters": 10,
    "dead_letters_by_reason": {"malformed_json": 6, "empty_text": 3, "duplicate_id": 1},
    "one_in_one_out": True, "input_tokens": 100_000, "output_tokens": 20_000,
    "cache_creation_input_tokens": 2_000, "cache_read_input_tokens": 900_000, "cost_usd": 0.25,
    "batches_created": 1, "wall_time_s": 3700.0, "output": "gs://bucket/out",
}


def test_report_without_plan_or_timeline():
    page = R.render_report(SUMMARY, [])
    svg = _parse(page)
    assert set(svg.charts) == {"chart-cost", "chart-dead", "chart-throughput", "chart-injection"}
    assert len(_bars(svg.charts["chart-cost"], "actual")) == 1
    assert len(_bars(svg.charts["chart-dead"])) == 3
    assert not _bars(svg.charts["chart-throughput"])
    assert "no completed results" in page
    # batch without plan: savings against the list price of the same requests
    saved, frac, versus = R.savings_vs_sync(SUMMARY)
    assert saved == pytest.approx(0.25) and frac == pytest.approx(0.5) and "list prices" in versus


def test_report_is_self_contained_and_escapes():
    hostile = dict(SUMMARY, run_id="<script>alert(1)</script>",
                   dead_letters_by_reason={"<b>x</b>": 2})
    page = R.render_report(hostile, [0.0, 1.0])
    svg = _parse(page)
    assert "script" not in svg.tags and "link" not in svg.tags and "img" not in svg.tags
    assert svg.external == []
    assert "<script>alert" not in page and "&lt;script&gt;" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page


def test_no_dead_letters_says_so():
    page = R.render_report(dict(SUMMARY, dead_letters=0, dead_letters_by_reason={}), [])
    assert not _bars(_parse(page).charts["chart-dead"])
    assert "no dead letters" in page


def test_bucket_timeline():
    t0 = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.timezone.utc)
    times = [t0 + dt.timedelta(seconds=s) for s in (0, 1, 1.5, 59, 600)]
    start, width, counts = R.bucket_timeline(times)
    assert start == t0.timestamp() and sum(counts) == 5 and len(counts) <= R.MAX_BUCKETS
    assert width == 15 and counts[0] == 3 and counts[-1] == 1
    # from the first submission: the wait shows as empty buckets
    _, width, counts = R.bucket_timeline([100.0, 100.0], start=40.0)
    assert counts[-1] == 2 and sum(counts[:-1]) == 0
    assert R.bucket_timeline([]) == (0.0, 1.0, [])
    assert sum(R.bucket_timeline(["2026-11-25T12:00:00Z", "2026-11-25T12:00:03+00:00"])[2]) == 2


def test_render_table_compares_plan_and_actual(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    from apache_beam.options.pipeline_options import PipelineOptions
    from pipeline.options import ClaudeOptions
    opts = PipelineOptions(["--task", TASK, "--input", SAMPLE, "--pack-key-field", "customer_id"]
                           ).view_as(ClaudeOptions)
    plan = P.plan(opts, None, False)
    summary = dict(SUMMARY, plan=plan.to_dict())
    text = R.render_table(summary)
    assert "planned" in text and "packed-batch" in text and "vs sync" in text and "at list prices" in text
    line = next(l for l in text.splitlines() if l.strip().startswith("batch "))
    assert "$0.2500" in line and "%" in line
    svg = _parse(R.render_report(summary, []))
    assert len(_bars(svg.charts["chart-cost"], "planned")) == 4
    assert len(_bars(svg.charts["chart-cost"], "actual")) == 1


# ---------------------------------------------------------------------------
# A real run, its report, in a real browser


@pytest.fixture(scope="module")
def small_run(emu, tmp_path_factory):
    """Sync mode on the first 90 sample lines (two broken ones), with a plan."""
    d = tmp_path_factory.mktemp("report")
    data = d / "in.jsonl"
    with open(SAMPLE, encoding="utf-8") as f:
        data.write_text("".join(line for _, line in zip(range(90), f)))
    out = d / "out"
    old = os.environ.get("ANTHROPIC_API_KEY")
    os.environ["ANTHROPIC_API_KEY"] = "test-key-not-a-secret"
    try:
        args = ["--task", TASK, "--input", str(data), "--output", str(out), "--mode", "sync",
                "--pack-key-field", "customer_id", "--api-base", emu.base_url]
        from apache_beam.options.pipeline_options import PipelineOptions
        from pipeline.options import ClaudeOptions
        emu.reset()
        plan = P.plan(PipelineOptions(args).view_as(ClaudeOptions), emu.base_url, True)
        emu.reset()
        assert run(args) == EXIT_OK
    finally:
        if old is None:
            os.environ.pop("ANTHROPIC_API_KEY", None)
        else:
            os.environ["ANTHROPIC_API_KEY"] = old
    summary = json.loads((out / "summary.json").read_text())
    summary["plan"] = plan.to_dict()
    return str(out), summary


def _screenshot(page_path: str, png: str, size=(1200, 1600)) -> None:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: install it (apt-get install -y chromium chromium-driver) "
                        "to check the report in a browser")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium chromium-driver)")
    profile = tempfile.mkdtemp(prefix="chromium-")
    try:
        subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", f"--user-data-dir={profile}", f"--screenshot={png}",
                        f"--window-size={size[0]},{size[1]}", f"file://{os.path.abspath(page_path)}"],
                       check=True, capture_output=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert os.path.exists(png), "chromium wrote no screenshot"


def _pixels_near(img, rgb, tol=12) -> int:
    r0, g0, b0 = rgb
    return sum(n for n, (r, g, b) in img.getcolors(img.width * img.height)
               if abs(r - r0) <= tol and abs(g - g0) <= tol and abs(b - b0) <= tol)


def test_report_of_a_real_run_renders_in_chromium(small_run, tmp_path):
    out, summary = small_run
    path = R.write_report(out, summary)
    assert path == f"{out}/report.html"
    page = open(path, encoding="utf-8").read()
    svg = _parse(page)
    assert svg.external == [] and "script" not in svg.tags

    # The charts hold what the run did.
    cost = svg.charts["chart-cost"]
    assert len(_bars(cost, "planned")) == 4 and len(_bars(cost, "actual")) == 1
    assert _bars(cost, "actual")[0]["data-mode"] == "sync"
    dead = svg.charts["chart-dead"]
    assert sorted(r["data-reason"] for r in _bars(dead)) == sorted(summary["dead_letters_by_reason"])
    times, first = R.read_timeline(out)
    assert len(times) == summary["results"] == 88 and first is not None
    tp = svg.charts["chart-throughput"]
    assert len(_bars(tp)) == len(R.bucket_timeline(times, start=first)[2]) >= 1
    assert len([p for p in tp["path"] if p.get("class") == "cumulative"]) == 1
    assert "88" in page and f"{summary['cost_usd']:.4f}" in page

    # In a browser: a page with real content, and the charts' colors are on screen.
    png = str(tmp_path / "report.png")
    _screenshot(path, png)
    from PIL import Image
    img = Image.open(png).convert("RGB")
    assert img.size == (1200, 1600)
    colors = img.getcolors(img.width * img.height)
    assert len(colors) > 200, "the screenshot is nearly uniform: the page did not render"
    background = max(colors)[0]
    assert background < 0.85 * img.width * img.height, "the screenshot is mostly one color"
    assert _pixels_near(img, (0x1d, 0x4e, 0xd8)) > 1500, "the actual-cost bar is not drawn"
    assert _pixels_near(img, (0xcb, 0xd5, 0xe1)) > 1500, "the planned-cost bars are not drawn"
    assert _pixels_near(img, (0xf9, 0x73, 0x16)) > 500, "the dead-letter bars are not drawn"
    assert _pixels_near(img, (0x38, 0xbd, 0xf8)) > 1000, "the throughput bars are not drawn"

    if os.environ.get("REPORT_SCREENSHOT"):  # refresh docs/report.png from a test run
        shutil.copy(png, os.environ["REPORT_SCREENSHOT"])


def test_timeline_epochs_of_a_timestamp_column_equal_datetime_timestamps():
    import datetime as dt

    import pyarrow as pa

    from pipeline.report import _epoch, _epochs
    values = [dt.datetime(2026, 11, 25, 15, 44, 7, 123456, tzinfo=dt.timezone.utc), None,
              dt.datetime(1999, 1, 1, tzinfo=dt.timezone.utc), dt.datetime(2030, 6, 1, 0, 0, 0, 1, tzinfo=dt.timezone.utc)]
    for typ in (pa.timestamp("us", tz="UTC"), pa.timestamp("us"), pa.timestamp("ms", tz="UTC")):
        column = pa.array([v if v is None or typ.tz else v and v.replace(tzinfo=None) for v in values], type=typ)
        assert _epochs(column) == [_epoch(v) for v in column.to_pylist() if v is not None]
    assert _epochs(pa.array(["2026-01-01T00:00:00Z", None])) == [_epoch("2026-01-01T00:00:00Z")]


def test_planned_savings_count_only_the_records_answered():
    """A packed run stopped by its budget after 100 of 1,000 records claims
    savings on those 100 only, and says the baseline is planned, not measured."""
    plan = {"modes": {"sync": {"cost_usd": 10.0, "records": 1000}}}
    summary = dict(SUMMARY, mode="packed", results=100, cost_usd=0.4, plan=plan)
    saved, frac, versus = R.savings_vs_sync(summary)
    # by hand: sync would have cost 10.0 / 1000 * 100 = 1.0 for the 100 answered
    assert saved == pytest.approx(0.6) and frac == pytest.approx(0.6)
    assert "planned" in versus and "100 records answered" in versus
    nothing = dict(summary, results=0, cost_usd=0.0)
    assert R.savings_vs_sync(nothing)[0] is None
