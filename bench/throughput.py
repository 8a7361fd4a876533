"""Rate-limit benchmark: how close to the account's limits does the Messages route run?

  python -m bench.throughput [--records 2000] [--concurrency 16]

Starts the emulator as a separate process on loopback with real-time token
buckets (default 3,000 RPM, 1,000,000 ITPM, 200,000 OTPM, 50 ms latency),
generates sample-like records (bench.datagen), and runs, one after another,
against the same emulator (reset in between):

  (a) ours:  python -m pipeline --mode sync --concurrency 16 --api-base URL
  (b) beam:  Apache Beam's AnthropicModelHandler + RunInference (the same system
             prompt, schema and per-record prompt), ANTHROPIC_BASE_URL=URL
  (c) redis: two `python -m pipeline` processes at once, half the records each,
             sharing one Redis budget (--rate-limit-redis)

For each it resets the emulator, samples /_emulator/stats every 0.25 s during
the run, reads them after it, and prints: the binding limit (the one of RPM / ITPM / OTPM
that allows the fewest requests per second given the tokens per request the
emulator actually billed), the achieved rate over the steady part of the run
(from 10% to 90% of the answers) as a % of that limit, 429s, retries, records
lost and wall time. A script that prints numbers; never a timed test.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from bench import datagen, procs
from tests.redis_server import RedisServer  # the tests' throwaway redis-server, reused

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK = os.path.join(_ROOT, "samples", "sentiment.yaml")
MESSAGES = "POST /v1/messages"
SAMPLE_EVERY_S = 0.25
#: The steady part of a run: from this share of the answers to the next.
STEADY = (0.10, 0.90)


# ----------------------------------------------------------------------------- processes

class EmulatorProcess(procs.EmulatorProcess):
    """The emulator with the account limits this benchmark runs against."""

    def __init__(self, rpm: float, itpm: float, otpm: float, latency_ms: float,
                 bucket_capacity_s: Optional[float] = None):
        flags = ["--rpm", str(rpm), "--itpm", str(itpm), "--otpm", str(otpm), "--latency-ms", str(latency_ms)]
        if bucket_capacity_s is not None:
            flags += ["--bucket-capacity-s", str(bucket_capacity_s)]
        super().__init__(flags)


class Sampler:
    """Polls the emulator's stats while a run goes on: (t, answered, input, output tokens)."""

    def __init__(self, emu: EmulatorProcess):
        self.emu = emu
        self.samples: List[Tuple[float, int, int, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                s = self.emu.stats()
            except OSError:
                continue
            tok = s["tokens"]["standard"]
            self.samples.append((time.monotonic(), s["messages_succeeded"],
                                 tok["input_tokens"] + tok["cache_creation_input_tokens"], tok["output_tokens"],
                                 sum(s["requests"].get(MESSAGES, {}).values())))
            self._stop.wait(SAMPLE_EVERY_S)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


# ----------------------------------------------------------------------------- measures

def steady_rates(samples: Sequence[Tuple[float, int, int, int, int]], total: int) -> Optional[Dict[str, float]]:
    """Answers, input and output tokens per second between 10% and 90% of the answers."""
    lo_n, hi_n = STEADY[0] * total, STEADY[1] * total
    lo = next((s for s in samples if s[1] >= lo_n), None)
    hi = next((s for s in samples if s[1] >= hi_n), None)
    if lo is None or hi is None or hi[0] <= lo[0]:
        return None
    dt = hi[0] - lo[0]
    return {"seconds": dt, "rps": (hi[1] - lo[1]) / dt, "itps": (hi[2] - lo[2]) / dt,
            "otps": (hi[3] - lo[3]) / dt, "sent_rps": (hi[4] - lo[4]) / dt}


def measure(name: str, stats: Dict[str, Any], samples, limits: Dict[str, float], n: int, wall_s: float,
            answered: int, dead: int, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    statuses = stats["requests"].get(MESSAGES, {})
    requests = sum(statuses.values())
    ok = statuses.get("200", 0)
    tok = stats["tokens"]["standard"]
    per_req_in = (tok["input_tokens"] + tok["cache_creation_input_tokens"]) / max(1, ok)
    per_req_out = tok["output_tokens"] / max(1, ok)
    # requests per second each limit allows at these sizes; the smallest binds
    capacity = {"RPM": limits["rpm"] / 60.0,
                "ITPM": limits["itpm"] / 60.0 / max(per_req_in, 1e-9),
                "OTPM": limits["otpm"] / 60.0 / max(per_req_out, 1e-9)}
    binding = min(capacity, key=capacity.get)
    steady = steady_rates(samples, ok)
    out = {
        "run": name, "records": n, "answered": answered, "dead_lettered": dead,
        "lost": n - answered - dead, "wall_s": round(wall_s, 1),
        "requests": requests, "status": dict(statuses),
        "429": statuses.get("429", 0), "429_pct": round(100.0 * statuses.get("429", 0) / max(1, requests), 2),
        "emulator_rate_limited": stats["rate_limited"],
        "retries": requests - stats["items_unique_sent"],
        "duplicates_billed": stats["duplicates_billed"],
        "input_tokens_per_request": round(per_req_in, 1), "output_tokens_per_request": round(per_req_out, 1),
        "cache_read_per_request": round(tok["cache_read_input_tokens"] / max(1, ok), 1),
        "capacity_rps": {k: round(v, 2) for k, v in capacity.items()},
        "binding": binding,
    }
    if steady:
        out["steady_s"] = round(steady["seconds"], 1)
        out["steady_rps"] = round(steady["rps"], 2)
        out["achieved_pct_of_binding"] = round(100.0 * steady["rps"] / capacity[binding], 1)
        out["steady_use_pct"] = {"RPM": round(100 * steady["sent_rps"] * 60 / limits["rpm"], 1),
                                 "ITPM": round(100 * steady["itps"] * 60 / limits["itpm"], 1),
                                 "OTPM": round(100 * steady["otps"] * 60 / limits["otpm"], 1)}
    out["overall_rps"] = round(ok / max(wall_s, 1e-9), 2)
    answering = [t for t, answered, *_ in samples if 0 < answered]
    done = [t for t, answered, *_ in samples if answered >= ok]
    if samples and answering and done:
        # time from the start of the process to its first answer, and from first to last answer
        out["to_first_answer_s"] = round(answering[0] - samples[0][0], 1)
        out["answering_s"] = round(done[0] - answering[0], 1)
    out.update(extra or {})
    return out


# ----------------------------------------------------------------------------- runs

def _pipeline_cmd(data: str, out: str, base_url: str, concurrency: int, extra: Sequence[str]) -> List[str]:
    return [sys.executable, "-m", "pipeline", "--task", TASK, "--input", data, "--output", out,
            "--mode", "sync", "--concurrency", str(concurrency), "--api-base", base_url,
            "--pack-key-field", "customer_id", "--overwrite", *extra]


def _env() -> Dict[str, str]:
    return dict(os.environ, ANTHROPIC_API_KEY="bench", PYTHONPATH=_ROOT)


def _read_ours(out: str) -> Tuple[int, int, Dict[str, Any]]:
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    return summary["results"], summary["dead_letters"], summary


def run_ours(emu: EmulatorProcess, data: str, n: int, tmp: str, concurrency: int, limits, extra: Sequence[str],
             name: str = "ours (sync)") -> Dict[str, Any]:
    emu.reset()
    out = os.path.join(tmp, "ours-" + str(len(os.listdir(tmp))))
    cmd = _pipeline_cmd(data, out, emu.base_url, concurrency, extra)
    with Sampler(emu) as sampler:
        t = time.monotonic()
        proc = subprocess.run(cmd, cwd=_ROOT, env=_env(), capture_output=True, text=True)
        wall = time.monotonic() - t
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
    answered, dead, summary = _read_ours(out) if proc.returncode == 0 else (0, 0, {})
    return measure(name, emu.stats(), sampler.samples, limits, n, wall, answered, dead,
                   {"exit_code": proc.returncode, "dead_by_reason": summary.get("dead_letters_by_reason", {}),
                    "command": " ".join(cmd[1:])})


def run_beam(emu: EmulatorProcess, data: str, n: int, tmp: str, workers: int, limits) -> Dict[str, Any]:
    emu.reset()
    out = os.path.join(tmp, f"beam-{workers}")
    cmd = [sys.executable, "-m", "bench.throughput", "_beam", "--input", data, "--output", out,
           "--workers", str(workers)]
    env = dict(_env(), ANTHROPIC_BASE_URL=emu.base_url)
    with Sampler(emu) as sampler:
        t = time.monotonic()
        proc = subprocess.run(cmd, cwd=_ROOT, env=env, capture_output=True, text=True)
        wall = time.monotonic() - t
    counts = {"answered": 0, "failed": 0}
    if proc.returncode == 0:
        with open(out + ".json") as f:
            counts = json.load(f)
    else:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-3000:])
    return measure(f"Beam RunInference ({workers} worker{'s' if workers > 1 else ''})", emu.stats(),
                   sampler.samples, limits, n, wall, counts["answered"], counts["failed"],
                   {"exit_code": proc.returncode, "command": " ".join(cmd[1:])})


def run_redis_pair(emu: EmulatorProcess, data: str, n: int, tmp: str, concurrency: int, limits,
                   extra: Sequence[str], use_redis: bool = True) -> Dict[str, Any]:
    halves = [os.path.join(tmp, "half-a.jsonl"), os.path.join(tmp, "half-b.jsonl")]
    with open(data, "rb") as f:
        lines = f.readlines()
    for i, path in enumerate(halves):
        with open(path, "wb") as f:
            f.writelines(lines[i::2])
    with (RedisServer() if use_redis else _NoRedis()) as redis:
        emu.reset()
        outs = [os.path.join(tmp, f"pair-{int(use_redis)}-{i}") for i in range(2)]
        shared = ["--rate-limit-redis", redis.url] if use_redis else []
        cmds = [_pipeline_cmd(halves[i], outs[i], emu.base_url, concurrency, [*extra, *shared])
                for i in range(2)]
        with Sampler(emu) as sampler:
            t = time.monotonic()
            procs = [subprocess.Popen(c, cwd=_ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True) for c in cmds]
            outputs = [p.communicate() for p in procs]
            wall = time.monotonic() - t
    answered = dead = 0
    for p, (o, e), out in zip(procs, outputs, outs):
        if p.returncode != 0:
            sys.stderr.write(o[-2000:] + e[-3000:])
            continue
        a, d, _ = _read_ours(out)
        answered, dead = answered + a, dead + d
    return measure("ours x2 processes + Redis" if use_redis else "ours x2 processes, no Redis (control)",
                   emu.stats(), sampler.samples, limits, n, wall, answered, dead,
                   {"exit_code": max(p.returncode for p in procs),
                    "command": " & ".join(" ".join(c[1:]).replace(redis.url, "redis://127.0.0.1:RP/0")
                                          for c in cmds)})


class _NoRedis:
    url = "-"

    def __enter__(self) -> "_NoRedis":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


# ----------------------------------------------------------------------------- (b) in its own process

def beam_main(argv: Sequence[str]) -> int:
    """RunInference with AnthropicModelHandler over the same requests our sync mode sends."""
    import apache_beam as beam
    from apache_beam.ml.inference.anthropic_inference import AnthropicModelHandler, message_from_string
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    from apache_beam.options.pipeline_options import PipelineOptions

    from transforms.api.client import wire_schemas
    from transforms.records import Record
    from transforms.prompts.requests import RequestBuilder
    from transforms.prompts.task import load_task

    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args(argv)

    task = load_task(TASK)
    builder = RequestBuilder(task=task, run_id="bench", wire_schemas=wire_schemas(task))
    shared = builder.shared_size(False)

    def to_prompt(line: str):
        row = json.loads(line)
        rec = Record(record_id=str(row["id"]), pack_key=str(row.get("customer_id") or ""), text=row["text"],
                     attrs=row)
        params = builder.params(builder.single(rec, shared=shared))
        return rec.record_id, params["messages"][0]["content"]

    template = builder.params(builder.single(Record("x", "", "x", {"channel": "", "subject": ""})))
    handler = AnthropicModelHandler(model_name=task.model, request_fn=message_from_string,
                                    system=template["system"], output_config=template.get("output_config"))
    options = PipelineOptions(direct_num_workers=args.workers,
                              direct_running_mode="multi_threading" if args.workers > 1 else "in_memory")
    with beam.Pipeline(options=options) as p:
        prompts = (p | beam.io.ReadFromText(args.input) | beam.Map(to_prompt))
        if args.workers > 1:
            # the DirectRunner spreads a stage over its workers only after a shuffle
            prompts = prompts | beam.Reshuffle()
        main, other = (prompts | RunInference(KeyedModelHandler(handler),
                                              inference_args={"max_tokens": task.max_tokens})
                       .with_exception_handling())
        (main | "ok ids" >> beam.Map(lambda kv: kv[0])
         | "ok" >> beam.io.WriteToText(args.output + "-ok", shard_name_template=""))
        (other.failed_inferences | "failed ids" >> beam.Map(lambda e: repr(e)[:200])
         | "failed" >> beam.io.WriteToText(args.output + "-failed", shard_name_template=""))

    def lines(path: str) -> int:
        with open(path) as f:
            return sum(1 for _ in f)

    with open(args.output + "-ok") as f:
        ok_ids = {line.strip() for line in f}
    with open(args.output + ".json", "w") as f:
        json.dump({"answered": len(ok_ids), "failed": lines(args.output + "-failed")}, f)
    return 0


# ----------------------------------------------------------------------------- report

def table(rows: Sequence[Dict[str, Any]]) -> str:
    head = ("| run | binding limit | achieved (steady) | % of binding | 429s (% of requests) | retries | "
            "duplicates billed | records lost | dead-lettered | wall s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cap = r["capacity_rps"][r["binding"]]
        lines.append(
            f"| {r['run']} | {r['binding']} ({cap:.1f} req/s) | "
            f"{r.get('steady_rps', float('nan')):.1f} req/s | {r.get('achieved_pct_of_binding', float('nan')):.1f}% | "
            f"{r['429']} ({r['429_pct']:.2f}%) | {r['retries']} | {r['duplicates_billed']} | {r['lost']} | "
            f"{r['dead_lettered']} | {r['wall_s']:.1f} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_beam"]:
        return beam_main(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rpm", type=float, default=3000)
    ap.add_argument("--itpm", type=float, default=1_000_000)
    ap.add_argument("--otpm", type=float, default=200_000)
    ap.add_argument("--latency-ms", type=float, default=50)
    ap.add_argument("--bucket-capacity-s", type=float, default=None,
                    help="emulator bucket size in seconds of refill (default: the emulator's, 1 s)")
    ap.add_argument("--runs", default="ours,beam,redis",
                    help="comma-separated subset of: ours, beam, redis, pair (two processes "
                         "without Redis: a control for redis)")
    ap.add_argument("--beam-workers", type=int, nargs="*", default=[1, 16],
                    help="DirectRunner worker threads for the Beam run(s)")
    ap.add_argument("--pipeline-arg", action="append", default=[],
                    help="extra flag for our pipeline, e.g. --pipeline-arg=--rpm=2900 (repeatable)")
    ap.add_argument("--json", help="also write the measures to this file")
    args = ap.parse_args(argv)
    runs = set(args.runs.split(","))
    limits = {"rpm": args.rpm, "itpm": args.itpm, "otpm": args.otpm}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        data = os.path.join(tmp, "in.jsonl")
        datagen.write_jsonl(data, args.records, seed=1)
        with EmulatorProcess(args.rpm, args.itpm, args.otpm, args.latency_ms, args.bucket_capacity_s) as emu:
            print(f"emulator {emu.base_url}: {' '.join(emu.cmd[2:])}", flush=True)
            if "ours" in runs:
                rows.append(run_ours(emu, data, args.records, tmp, args.concurrency, limits, args.pipeline_arg))
                print(json.dumps(rows[-1], indent=1), flush=True)
            if "beam" in runs:
                for w in args.beam_workers:
                    rows.append(run_beam(emu, data, args.records, tmp, w, limits))
                    print(json.dumps(rows[-1], indent=1), flush=True)
            if "redis" in runs:
                rows.append(run_redis_pair(emu, data, args.records, tmp, args.concurrency, limits,
                                           args.pipeline_arg))
                print(json.dumps(rows[-1], indent=1), flush=True)
            if "pair" in runs:
                rows.append(run_redis_pair(emu, data, args.records, tmp, args.concurrency, limits,
                                           args.pipeline_arg, use_redis=False))
                print(json.dumps(rows[-1], indent=1), flush=True)
    print()
    print(table(rows))
    short = [r["run"] for r in rows if r.get("steady_s", 0) < 10]
    if short:
        print(f"\nnote: steady part under 10 s for {', '.join(short)}: the servers' initial burst "
              "(1 s of refill) inflates the rate; use more --records")
    procs.save_rows(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
