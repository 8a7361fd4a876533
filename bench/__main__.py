"""Benchmarks (scripts that print numbers; never timed unit tests).

  python -m bench batch --records 100000

runs N generated records through the batch route against the emulator (in its
own process, delays at zero) and, in the same run, a plain Beam pass over the
same records (read -> stateful DoFn -> Parquet, no API). Each runs in its own
child process so its wall time and peak RSS are its own.
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


def _peak_mib_of(cmd, env=None):
    """(wall s, peak RSS MiB, exit code) of `cmd`, measured by a wrapper process of
    its own (RUSAGE_CHILDREN is a cumulative max over all of a process's children)."""
    wrapper = [sys.executable, "-c",
               "import resource,subprocess,sys,time,json;t=time.monotonic();"
               "r=subprocess.run(sys.argv[1:],capture_output=True);"
               "u=resource.getrusage(resource.RUSAGE_CHILDREN);"
               "sys.stderr.write(r.stdout.decode(errors='replace')[-3000:]+r.stderr.decode(errors='replace')[-3000:] if r.returncode else '');"
               "print(json.dumps({'wall':time.monotonic()-t,'rss':u.ru_maxrss/1024,'rc':r.returncode}))"] + cmd
    out = subprocess.run(wrapper, cwd=_ROOT, env=env, capture_output=True, text=True)
    if out.stderr:
        sys.stderr.write(out.stderr)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return data["wall"], data["rss"], data["rc"]


def bench_batch(records: int, sizes, repeat: int = 1) -> None:
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
                plains.append(_peak_mib_of([py, "-m", "bench.plain", "--input", data,
                                            "--output", os.path.join(tmp, f"plain{i}")]))
                with procs.EmulatorProcess() as emu:
                    env = dict(os.environ, ANTHROPIC_API_KEY="bench-key")
                    ours.append(_peak_mib_of(
                        [py, "-m", "pipeline", "--task", "samples/sentiment.yaml", "--input", data,
                         "--output", os.path.join(tmp, f"ours{i}"), "--mode", "batch",
                         "--pack-key-field", "customer_id", "--api-base", emu.base_url,
                         "--poll-interval-s", "0.2", "--poll-max-interval-s", "1"], env=env))
            rows.append((n, _median_run(plains), _median_run(ours), max(r[2] for r in ours)))
    runs = f" (median of {repeat})" if repeat > 1 else ""
    print(f"{'records':>8} | {'plain wall s':>12} {'plain MiB':>9} | {'batch wall s':>12} {'batch MiB':>9} | ratio{runs}")
    for n, plain, ours, rc in rows:
        print(f"{n:>8} | {plain[0]:>12.1f} {plain[1]:>9.0f} | {ours[0]:>12.1f} {ours[1]:>9.0f} | "
              f"{ours[0] / plain[0]:.2f}x{'' if rc == 0 else '  (FAILED rc=%d)' % rc}")


def _median_run(runs):
    """(median wall s, median peak MiB) of (wall, MiB, rc) runs."""
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


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
    m = sub.add_parser("modes", help="the four modes side by side on the same records")
    m.add_argument("--records", type=int, default=10_000)
    m.add_argument("--concurrency", type=int, default=16)
    m.add_argument("--input", default=None,
                   help="a JSONL file to use instead of generated records (e.g. samples/emails.jsonl)")
    args = parser.parse_args(argv)
    if args.which == "batch":
        bench_batch(args.records, sorted(set(args.also + [args.records])), max(1, args.repeat))
    elif args.which == "modes":
        bench_modes(args.records, args.concurrency, args.input)
    return 0


if __name__ == "__main__":
    sys.exit(main())
