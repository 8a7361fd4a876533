"""Load shedding against a deadline the rate limit cannot meet (docs/benchmarks-throughput.md).

    .venv/bin/python -m bench.shedding --records 400 --rpm 600 --deadline-s 25

Runs `python -m pipeline --mode sync` once per --shed-to choice against the
emulator in its own process (real-time RPM bucket, --latency-ms, batches that
end after --batch-delay-s), with an absolute --deadline (ISO time) so the
deadline the job uses is known here exactly. Prints, per run: wall time,
records answered by the Messages API, by the Batch API, shed to the dead
letter, Messages answers completed after the deadline, when the last
Messages answer came relative to the deadline (negative: before it), and the
429s the emulator answered.
"""
from __future__ import annotations

import argparse
import collections
import datetime as dt
import glob
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

import pyarrow.parquet as pq

from bench import datagen
from bench.procs import ROOT, EmulatorProcess

TASK = "samples/sentiment.yaml"


def _rows(directory: str, columns) -> List[Dict[str, Any]]:
    rows: List[Dict[str, Any]] = []
    for path in sorted(glob.glob(os.path.join(directory, "*.parquet"))):
        rows += pq.read_table(path, columns=list(columns)).to_pylist()
    return rows


def run_once(shed_to: str, data: str, workdir: str, args) -> Dict[str, Any]:
    flags = ["--rpm", str(args.rpm), "--bucket-capacity-s", "3", "--latency-ms", str(args.latency_ms),
             "--batch-delay-s", str(args.batch_delay_s)]
    with EmulatorProcess(flags) as emu:
        out = os.path.join(workdir, f"out-{shed_to}")
        started = time.time()
        # The deadline counts from the start of the command (planning and
        # DirectRunner start-up included), as a scheduler's deadline would.
        deadline = dt.datetime.fromtimestamp(started + args.deadline_s, dt.timezone.utc)
        cmd = [sys.executable, "-m", "pipeline", "--task", TASK, "--input", data, "--output", out,
               "--mode", "sync", "--api-base", emu.base_url, "--concurrency", str(args.concurrency),
               "--rpm", str(args.rpm), "--deadline", deadline.strftime("%Y-%m-%dT%H:%M:%SZ"),
               "--shed-to", shed_to, "--poll-interval-s", "0.5", "--poll-max-interval-s", "1"]
        env = dict(os.environ, ANTHROPIC_API_KEY="bench-not-a-secret")
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.time() - started
        if proc.returncode != 0:
            raise RuntimeError(f"pipeline exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        stats = emu.stats()
    results = _rows(os.path.join(out, "results"), ("record_id", "batch_id", "completed_at"))
    dead = _rows(os.path.join(out, "dead_letter"), ("record_id", "error_type"))
    online = [r for r in results if not r["batch_id"]]
    margins = [(r["completed_at"] - deadline).total_seconds() for r in online]
    statuses = collections.Counter()
    for route, by_status in stats["requests"].items():
        if route == "POST /v1/messages":
            statuses.update(by_status)
    return {
        "shed_to": shed_to, "wall_s": wall, "records": args.records,
        "messages": len(online), "batch": len(results) - len(online),
        "shed_dead": sum(1 for d in dead if d["error_type"] == "shed"), "other_dead": sum(
            1 for d in dead if d["error_type"] != "shed"),
        "late_messages": sum(1 for m in margins if m > 0), "last_vs_deadline_s": max(margins, default=0.0),
        "responses_429": statuses.get("429", 0),
        "one_in_one_out": len(results) + len(dead) == args.records,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=400)
    parser.add_argument("--rpm", type=int, default=600, help="emulator limit and --rpm of the job")
    parser.add_argument("--deadline-s", type=float, default=25.0,
                        help="deadline, seconds after the command starts")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--batch-delay-s", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--runs", default="wait,batch,dead-letter")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-shed-") as workdir:
        data = os.path.join(workdir, "in.jsonl")
        datagen.write_jsonl(data, args.records, seed=1)
        print(f"{args.records} records, sync, {args.rpm} RPM ({args.rpm / 60:g}/s) enforced by the emulator "
              f"and given as --rpm, deadline {args.deadline_s:g} s after the command starts, "
              f"latency {args.latency_ms:g} ms, batches end after {args.batch_delay_s:g} s")
        print("| --shed-to | wall s | Messages API | Batch API | shed (dead letter) | other dead | "
              "Messages answers after the deadline | last Messages answer vs deadline, s | 429s | one in, one out |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for shed_to in args.runs.split(","):
            r = run_once(shed_to, data, workdir, args)
            print(f"| {r['shed_to']} | {r['wall_s']:.1f} | {r['messages']} | {r['batch']} | {r['shed_dead']} | "
                  f"{r['other_dead']} | {r['late_messages']} | {r['last_vs_deadline_s']:+.1f} | "
                  f"{r['responses_429']} | {'yes' if r['one_in_one_out'] else 'NO'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
