"""Benchmarks (scripts that print numbers; never timed unit tests).

  python -m bench batch --records 100000

runs N generated records through the batch route against the emulator (in its
own process, delays at zero) and, in the same run, a plain Beam pass over the
same records (read -> stateful DoFn -> Parquet, no API). Each runs under a
wrapper of its own (bench/treemeasure.py, a child subreaper that reaps every
descendant, orphans included), which measures the job's whole process tree:

  CPU s      user+sys seconds of the tree (getrusage RUSAGE_CHILDREN after all
             of it is reaped): helpers and grandchildren count, even ones that
             outlive the job; the emulator is not in the tree and does not count
  peak MiB   the largest sum of RSS over the tree's processes, sampled every
             50 ms (shared pages count once per process), or max1 if larger
             (a sample can miss a short spike); max1 is ru_maxrss, the peak
             of the largest single process
  wall s     informational only, with the exit code

The figures compared are CPU and peak memory. Wall time is not: the emulator
and the job share this machine's cores, so the job's wall time includes time
spent waiting on (and competing with) the emulator and whatever else runs here.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional

from bench import datagen, procs

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _measure_tree(cmd, env=None) -> dict:
    """What bench/treemeasure.py measured of `cmd`'s whole process tree: cpu_s,
    peak_tree_mib, max_single_mib, wall_s, rc (and a few more). The wrapper is a
    process of its own, so nothing else this process started (the emulator) counts."""
    out = subprocess.run([sys.executable, "-m", "bench.treemeasure", "--", *cmd],
                         cwd=_ROOT, env=env, capture_output=True, text=True)
    if out.stderr:
        sys.stderr.write(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


_KEYS = ("cpu_s", "user_s", "sys_s", "peak_tree_mib", "peak_tree_sampled_mib", "max_single_mib", "wall_s")


def _median_run(runs) -> dict:
    """Each measure's median over `runs` (separately, so not one run's figures), and the worst rc."""
    med = {k: statistics.median(r[k] for r in runs) for k in _KEYS}
    med["rc"] = next((r["rc"] for r in runs if r["rc"] != 0), 0)
    med["runs"] = len(runs)
    return med


def bench_batch(records: int, sizes, repeat: int = 1, json_path: Optional[str] = None) -> None:
    """Plain pass and batch route per size, `repeat` times interleaved; the
    median of each (the machine's load moves single runs by 10-30%)."""
    py = sys.executable
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            data = os.path.join(tmp, "in.jsonl")
            datagen.write_jsonl(data, n, seed=1)
            plains, ours = [], []
            for i in range(repeat):
                plains.append(_measure_tree([py, "-m", "bench.plain", "--input", data,
                                             "--output", os.path.join(tmp, f"plain{i}")]))
                with procs.EmulatorProcess() as emu:
                    env = dict(os.environ, ANTHROPIC_API_KEY="bench-key")
                    ours.append(_measure_tree(
                        [py, "-m", "pipeline", "--task", "samples/sentiment.yaml", "--input", data,
                         "--output", os.path.join(tmp, f"ours{i}"), "--mode", "batch",
                         "--pack-key-field", "customer_id", "--api-base", emu.base_url,
                         "--poll-interval-s", "0.2", "--poll-max-interval-s", "1"], env=env))
            rows.append({"records": n, "plain": _median_run(plains), "batch": _median_run(ours),
                         "plain_runs": plains, "batch_runs": ours})
    runs = f" (median of {repeat})" if repeat > 1 else ""
    print(f"CPU s = user+sys of the whole process tree; peak MiB = largest sum of the tree's RSS "
          f"(sampled every 50 ms, at least max1); max1 = ru_maxrss of its largest process; wall s informational{runs}")
    print(f"{'records':>8} | {'plain CPU s':>11} {'plain peak MiB':>14} {'max1':>5} {'wall s':>6} | "
          f"{'batch CPU s':>11} {'batch peak MiB':>14} {'max1':>5} {'wall s':>6} | {'CPU ratio':>9} | {'RSS ratio':>9}")
    for row in rows:
        p, b = row["plain"], row["batch"]
        row["cpu_ratio"] = b["cpu_s"] / p["cpu_s"] if p["cpu_s"] else None
        row["rss_ratio"] = b["peak_tree_mib"] / p["peak_tree_mib"] if p["peak_tree_mib"] else None
        failed = "".join(f"  ({side} FAILED rc={m['rc']})" for side, m in (("plain", p), ("batch", b)) if m["rc"])
        print(f"{row['records']:>8} | {p['cpu_s']:>11.1f} {p['peak_tree_mib']:>14.0f} {p['max_single_mib']:>5.0f} "
              f"{p['wall_s']:>6.1f} | {b['cpu_s']:>11.1f} {b['peak_tree_mib']:>14.0f} {b['max_single_mib']:>5.0f} "
              f"{b['wall_s']:>6.1f} | {_ratio(row['cpu_ratio']):>9} | {_ratio(row['rss_ratio']):>9}{failed}")
    procs.save_rows(json_path, rows)


def _ratio(x) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def bench_modes(records: int, concurrency: int, input_path: Optional[str] = None) -> None:
    """Each mode on the same records against the emulator: requests, tokens, cost, wall time.

    The records are `records` generated ones, or the lines of `input_path`."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if input_path:
            data = os.path.abspath(input_path)
            with open(data, "rb") as f:
                records = sum(1 for line in f if line.strip())
        else:
            data = os.path.join(tmp, "in.jsonl")
            datagen.write_jsonl(data, records, seed=2)
        for mode in ("sync", "packed", "batch", "packed-batch"):
            with procs.EmulatorProcess() as emu:
                base = emu.base_url
                out = os.path.join(tmp, mode)
                env = dict(os.environ, ANTHROPIC_API_KEY="bench-key")
                started = time.monotonic()
                proc = subprocess.run([sys.executable, "-m", "pipeline", "--task", "samples/sentiment.yaml",
                                       "--input", data, "--output", out, "--mode", mode, "--pack-key-field",
                                       "customer_id", "--api-base", base, "--concurrency", str(concurrency),
                                       "--poll-interval-s", "0.2", "--poll-max-interval-s", "1",
                                       "--plan-count-calls", "0"],
                                      cwd=_ROOT, env=env, capture_output=True, text=True)
                wall = time.monotonic() - started
                if proc.returncode != 0:
                    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
                stats = emu.stats()
                with open(os.path.join(out, "summary.json")) as f:
                    summary = json.load(f)
            requests = stats["messages_calls"] + stats["batch_requests_received"]
            rows.append((mode, requests, summary, wall))
    sync_cost = rows[0][2]["cost_usd"]
    print(f"{records:,} records | {'mode':<13} {'requests':>8} {'input':>10} {'cache write':>11} "
          f"{'cache read':>11} {'output':>9} {'cost $':>9} {'$/1k rec':>9} {'vs sync':>7} {'wall s':>7}")
    for mode, requests, s, wall in rows:
        print(f"{'':>{len(f'{records:,} records')}} | {mode:<13} {requests:>8,} {s['input_tokens']:>10,} "
              f"{s['cache_creation_input_tokens']:>11,} {s['cache_read_input_tokens']:>11,} "
              f"{s['output_tokens']:>9,} {s['cost_usd']:>9.4f} {1000 * s['cost_usd'] / records:>9.4f} "
              f"{s['cost_usd'] / sync_cost:>7.1%} {wall:>7.1f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="which", required=True)
    b = sub.add_parser("batch", help="batch route vs a plain Beam pass")
    b.add_argument("--records", type=int, default=100_000)
    b.add_argument("--also", type=int, nargs="*", default=[],
                   help="extra record counts, to show memory is flat in the number of results")
    b.add_argument("--repeat", type=int, default=1,
                   help="runs of each side per size, interleaved; the median is printed")
    b.add_argument("--json", default=None, metavar="PATH", help="also save the rows (and every run) as JSON")
    m = sub.add_parser("modes", help="the four modes side by side on the same records")
    m.add_argument("--records", type=int, default=10_000)
    m.add_argument("--concurrency", type=int, default=16)
    m.add_argument("--input", default=None,
                   help="a JSONL file to use instead of generated records (e.g. samples/emails.jsonl)")
    args = parser.parse_args(argv)
    if args.which == "batch":
        bench_batch(args.records, sorted(set(args.also + [args.records])), max(1, args.repeat), args.json)
    elif args.which == "modes":
        bench_modes(args.records, args.concurrency, args.input)
    return 0


if __name__ == "__main__":
    sys.exit(main())
