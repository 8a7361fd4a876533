"""Streaming benchmark: end-to-end latency and memory under a backlog (Pub/Sub -> Claude -> Parquet).

  python -m bench.streaming [--parts latency,memory] [--mode sync] [--records 1000] [--rate 10]
                            [--max-buffering-secs 2] [--window-secs 10]
                            [--mem-records 20000] [--mem-rpm 600] [--mem-duration-s 120]

Starts the real Pub/Sub emulator (tests/pubsub_emulator.py: `gcloud beta
emulators pubsub start`) and, per part, the Claude emulator in its own process
(`python -m emulator --port P [--rpm N] --latency-ms N`) and the pipeline as a
subprocess in streaming mode:

  python -m pipeline --task samples/sentiment.yaml --input-subscription SUB --output OUT
         --mode MODE --pack-key-field customer_id --api-base URL --window-secs 10
         --max-buffering-secs 2 --streaming-duration-s D

Before each part a few warm-up messages are published and awaited in the
Parquet output, so the pipeline's start-up (DirectRunner, ~10-20 s) is not
counted as latency.

(1) latency: N records (bench.datagen, ids lat-000001..) are published at a
    steady rate, one message each, with its publish time in the payload
    (`published_at`, epoch seconds) and in a dict id -> publish time kept here
    (the results Parquet carries record_id and completed_at, not the payload).
    A poller lists DIR/results/*/*.parquet and DIR/dead_letter/*/*.parquet every
    0.25 s and reads the record_id of every new or rewritten file. Per record:
      publish -> seen:  when this script first read the id from a file
                        (an upper bound: adds up to one poll interval + read time);
      publish -> mtime: the mtime of the first file holding the id (when the
                        sink finished writing it);
      publish -> completed_at: when the pipeline got the answer (before the sink).
    Publish time = time.time() just before PublisherClient.publish (batching off:
    max_messages=1, so each message is sent at once). Same host, same clock.
    Reports p50/p95/max and throughput.

(2) memory: the Claude emulator rate-limited (--rpm 600: the limiter lets out
    10 requests/s); 20,000 messages published as fast as the client can; the
    RSS of the pipeline process and all its descendants (/proc/PID/status VmRSS,
    descendants found through /proc/*/stat ppid) sampled every second for a
    bounded time (120 s from the start of publishing, or until every record
    has landed plus 15 s). Reports the RSS before publishing, its peak,
    first/middle/last samples, the slope over the second half, the RSS when a
    quarter, half, three quarters and all of the records had landed (and the
    growth per record between the first and the last of those), and how many
    records landed. After stopping the pipeline, the
    messages still in the subscription are drained and counted: published -
    left = messages the pipeline pulled and acknowledged; pulled - landed =
    records it held in memory (or in flight) when it was stopped.

A script that prints numbers; never a timed test. Needs gcloud with the
Pub/Sub emulator component (and Java).
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pyarrow.parquet as pq

from bench import datagen, procs

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK = "samples/sentiment.yaml"
POLL_S = 0.25
#: (memory) once every record has landed, sample this much longer, to show the plateau
DONE_GRACE_S = 15.0
WARMUP = 5


# ----------------------------------------------------------------------------- processes

class ClaudeEmulator(procs.EmulatorProcess):
    """The emulator, optionally rate-limited, with a fixed latency."""

    def __init__(self, rpm: Optional[float], latency_ms: float):
        super().__init__((["--rpm", f"{rpm:g}"] if rpm else []) + ["--latency-ms", f"{latency_ms:g}"])


@contextlib.contextmanager
def pubsub():
    """tests/pubsub_emulator.py's emulator, with pytest's skip/fail turned into RuntimeError."""
    import pytest
    from tests.pubsub_emulator import pubsub_emulator
    try:
        with pubsub_emulator() as host:
            yield host
    except (pytest.skip.Exception, pytest.fail.Exception) as e:
        raise RuntimeError(str(e)) from None


class Pipeline:
    """`python -m pipeline` in streaming mode, in its own session (process group); output to a log file."""

    def __init__(self, host: str, sub: str, out: str, base_url: str, args: argparse.Namespace,
                 duration_s: float, log: str):
        self.out = out
        self.log = log
        self.cmd = [sys.executable, "-m", "pipeline", "--task", TASK, "--input-subscription", sub,
                    "--output", out, "--mode", args.mode, "--pack-key-field", "customer_id",
                    "--api-base", base_url, "--window-secs", f"{args.window_secs:g}",
                    "--max-buffering-secs", f"{args.max_buffering_secs:g}",
                    "--streaming-duration-s", f"{duration_s:g}"]
        if args.mode in ("batch", "packed-batch"):
            self.cmd += ["--poll-interval-s", "0.1", "--poll-max-interval-s", "0.5"]
        self.cmd += list(args.pipeline_arg)
        self.env = dict(os.environ, PUBSUB_EMULATOR_HOST=host, ANTHROPIC_API_KEY="bench",
                        # keep a caller's PYTHONPATH after ours (e.g. a measuring sitecustomize)
                        PYTHONPATH=os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")])))
        self.proc: Optional[subprocess.Popen] = None
        self.started = 0.0

    def __enter__(self) -> "Pipeline":
        self._logf = open(self.log, "wb")
        self.started = time.time()
        self.proc = subprocess.Popen(self.cmd, cwd=_ROOT, env=self.env, stdout=self._logf,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 3000) -> str:
        with open(self.log, "rb") as f:
            return f.read().decode(errors="replace")[-n:]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        self._logf.close()

    def shown_cmd(self) -> str:
        return " ".join(self.cmd[1:])


# ----------------------------------------------------------------------------- /proc

def _proc_table() -> Dict[int, int]:
    """pid -> ppid of every process."""
    table = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                text = f.read()
        except OSError:
            continue
        # comm may hold spaces and parentheses: split after the last ')'
        fields = text[text.rfind(")") + 2:].split()
        table[int(stat.split("/")[2])] = int(fields[1])
    return table


def _tree(pid: int) -> List[int]:
    table = _proc_table()
    children: Dict[int, List[int]] = {}
    for p, pp in table.items():
        children.setdefault(pp, []).append(p)
    todo, tree = [pid], []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of pid and its descendants (/proc/PID/stat utime, stime)."""
    total = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                text = f.read()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def tree_rss_kib(pid: int) -> Tuple[int, int]:
    """(sum of VmRSS in KiB over pid and all its descendants, number of processes)."""
    tree = _tree(pid)
    total = 0
    for p in tree:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total, len(tree)


# ----------------------------------------------------------------------------- output polling

class OutputPoller:
    """Polls OUT/results and OUT/dead_letter; first time and file mtime per record id."""

    def __init__(self, out: str, interval_s: float = POLL_S):
        self.out = out
        self.interval_s = interval_s
        self.seen: Dict[str, float] = {}          # id -> time.time() this poller first read it
        self.mtime: Dict[str, float] = {}         # id -> mtime of the first file holding it
        self.completed: Dict[str, float] = {}     # id -> completed_at (epoch s), results only
        self.dead: Dict[str, str] = {}            # id -> error_type
        self.rows = 0                             # rows read (re-read files counted once per version)
        self.bad_reads = 0
        self._files: Dict[str, Tuple[float, int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _scan(self) -> None:
        for kind in ("results", "dead_letter"):
            for path in glob.glob(os.path.join(self.out, kind, "*", "*.parquet")):
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                key = (st.st_mtime, st.st_size)
                if self._files.get(path) == key:
                    continue
                cols = ["record_id", "completed_at"] if kind == "results" else ["record_id", "error_type"]
                try:
                    table = pq.read_table(path, columns=cols)
                except Exception:  # noqa: BLE001 - a file being written; read it next time
                    self.bad_reads += 1
                    continue
                now = time.time()
                self._files[path] = key
                ids = table.column("record_id").to_pylist()
                other = table.column(cols[1]).to_pylist()
                with self._lock:
                    self.rows += len(ids)
                    for rid, extra in zip(ids, other):
                        if rid is None or rid in self.seen:
                            continue
                        self.seen[rid] = now
                        self.mtime[rid] = st.st_mtime
                        if kind == "results":
                            if extra is not None:
                                self.completed[rid] = extra.timestamp()
                        else:
                            self.dead[rid] = extra

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._scan()
            self._stop.wait(self.interval_s)

    def count(self, prefix: str = "") -> int:
        with self._lock:
            return sum(1 for k in self.seen if k.startswith(prefix))

    def __enter__(self) -> "OutputPoller":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._scan()


# ----------------------------------------------------------------------------- Pub/Sub

def _publisher(single: bool):
    from google.cloud import pubsub_v1
    if single:
        return pubsub_v1.PublisherClient(batch_settings=pubsub_v1.types.BatchSettings(max_messages=1))
    return pubsub_v1.PublisherClient()


def _payload(record: Dict[str, Any], published_at: float) -> bytes:
    return json.dumps({**record, "published_at": published_at}).encode()


def warm_up(host: str, topic: str, pipe: Pipeline, poller: OutputPoller, timeout_s: float) -> float:
    """Publishes WARMUP messages and waits until they land; returns seconds from pipeline start."""
    os.environ["PUBSUB_EMULATOR_HOST"] = host
    publisher = _publisher(single=False)
    records = list(datagen.generate_records(WARMUP, seed=99, customers=5))
    futures = [publisher.publish(topic, _payload({**r, "id": "warm-" + r["id"]}, time.time())) for r in records]
    for f in futures:
        f.result(timeout=60)
    deadline = time.monotonic() + timeout_s
    while poller.count("warm-") < WARMUP:
        if not pipe.alive():
            raise RuntimeError("the pipeline exited during warm-up:\n" + pipe.tail())
        if time.monotonic() > deadline:
            raise RuntimeError(f"warm-up records did not land within {timeout_s:.0f} s:\n" + pipe.tail())
        time.sleep(0.1)
    return time.time() - pipe.started


def drain_count(host: str, sub: str, budget_s: float = 60.0) -> Optional[int]:
    """Pulls (and acks) everything left in the subscription; returns how many distinct messages."""
    from google.cloud import pubsub_v1
    os.environ["PUBSUB_EMULATOR_HOST"] = host
    subscriber = pubsub_v1.SubscriberClient()
    ids = set()
    empty = 0
    deadline = time.monotonic() + budget_s
    try:
        while empty < 3:
            if time.monotonic() > deadline:
                return None
            try:
                response = subscriber.pull(subscription=sub, max_messages=1000, timeout=10,
                                           return_immediately=True)
            except Exception:  # noqa: BLE001 - deadline exceeded on an empty subscription
                empty += 1
                continue
            if not response.received_messages:
                empty += 1
                continue
            empty = 0
            ids.update(m.message.message_id for m in response.received_messages)
            subscriber.acknowledge(subscription=sub, ack_ids=[m.ack_id for m in response.received_messages])
    finally:
        subscriber.close()
    return len(ids)


# ----------------------------------------------------------------------------- measures

def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def dist(values: Sequence[float]) -> Dict[str, float]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "min": round(min(values), 3), "p50": round(pct(values, 0.5), 3),
            "p95": round(pct(values, 0.95), 3), "p99": round(pct(values, 0.99), 3),
            "max": round(max(values), 3), "mean": round(statistics.fmean(values), 3)}


def _topic(host: str, name: str) -> Tuple[str, str]:
    from tests.pubsub_emulator import create_topic_and_subscription
    return create_topic_and_subscription(host, name, name + "-sub")


# ----------------------------------------------------------------------------- (1) latency

def run_latency(host: str, args: argparse.Namespace, tmp: str) -> Dict[str, Any]:
    topic, sub = _topic(host, "bench-latency")
    out = os.path.join(tmp, "latency")
    n, rate = args.records, args.rate
    publish_s = n / rate
    budget = args.startup_timeout_s + publish_s + args.drain_timeout_s + 30
    with ClaudeEmulator(None, args.latency_ms) as emu, \
            Pipeline(host, sub, out, emu.base_url, args, budget, os.path.join(tmp, "latency.log")) as pipe, \
            OutputPoller(out) as poller:
        print(f"[latency] claude emulator: {' '.join(emu.cmd[1:])}", flush=True)
        print(f"[latency] pipeline: {pipe.shown_cmd()}", flush=True)
        warm_s = warm_up(host, topic, pipe, poller, args.startup_timeout_s)
        print(f"[latency] warm-up landed {warm_s:.1f} s after the pipeline started; publishing {n} "
              f"at {rate:g}/s", flush=True)
        records = list(datagen.generate_records(n, seed=7, customers=max(1, n // 5)))
        publisher = _publisher(single=True)
        cpu0, load0 = tree_cpu_s(pipe.proc.pid), os.getloadavg()[0]
        sent: Dict[str, float] = {}
        futures = []
        t0 = time.time()
        for i, r in enumerate(records):
            due = t0 + i / rate
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            rid = "lat-" + r["id"]
            now = time.time()
            sent[rid] = now
            futures.append(publisher.publish(topic, _payload({**r, "id": rid}, now)))
        for f in futures:
            f.result(timeout=60)
        t_pub_end = time.time()
        cpu_pct = 100 * (tree_cpu_s(pipe.proc.pid) - cpu0) / max(1e-9, t_pub_end - t0)
        load1 = os.getloadavg()[0]
        print(f"[latency] published {n} in {t_pub_end - t0:.1f} s; waiting for the output", flush=True)
        deadline = time.monotonic() + args.drain_timeout_s
        while poller.count("lat-") < n and time.monotonic() < deadline and pipe.alive():
            time.sleep(0.2)
        alive = pipe.alive()
    landed = [rid for rid in sent if rid in poller.seen]
    results = [rid for rid in landed if rid not in poller.dead]
    seen = [poller.seen[r] - sent[r] for r in results]
    mtime = [poller.mtime[r] - sent[r] for r in results]
    completed = [poller.completed[r] - sent[r] for r in results if r in poller.completed]
    to_file = [poller.mtime[r] - poller.completed[r] for r in results if r in poller.completed]
    last_land = max((poller.mtime[r] for r in results), default=t0)
    # median publish -> mtime latency per tenth of the records, in publish order: does it drift?
    order = [r for r in sent if r in poller.mtime and r not in poller.dead]
    tenth = max(1, len(order) // 10)
    deciles = [round(pct([poller.mtime[r] - sent[r] for r in order[i:i + tenth]], 0.5), 2)
               for i in range(0, len(order) - tenth + 1, tenth)][:10]
    # throughput over the measured records: results per second from first publish to last file write
    return {
        "part": "latency", "mode": args.mode, "records": n, "publish_rate": rate,
        "publish_s": round(t_pub_end - t0, 1), "warmup_landed_after_start_s": round(warm_s, 1),
        "landed": len(landed), "results": len(results), "dead_lettered": len(landed) - len(results),
        "dead_reasons": sorted(set(poller.dead[r] for r in landed if r in poller.dead)),
        "missing": n - len(landed), "rows_read": poller.rows, "pipeline_alive_at_end": alive,
        "latency_publish_to_mtime_s": dist(mtime),
        "latency_publish_to_seen_s": dist(seen),
        "latency_publish_to_completed_at_s": dist(completed),
        "completed_at_to_mtime_s": dist(to_file),
        "p50_mtime_latency_by_tenth_s": deciles,
        "over_5s": sum(1 for x in mtime if x > 5), "over_10s": sum(1 for x in mtime if x > 10),
        # the slowest records: id, seconds after the first publish it was published, latency to mtime
        "slowest": [(r, round(sent[r] - t0, 1), round(poller.mtime[r] - sent[r], 2))
                    for r in sorted(results, key=lambda r: poller.mtime[r] - sent[r])[-5:][::-1]],
        "throughput_rps": round(len(results) / max(1e-9, last_land - t0), 2),
        "pipeline_cpu_pct_while_publishing": round(cpu_pct), "cpus": os.cpu_count(),
        "loadavg_1min_start_end": [round(load0, 2), round(load1, 2)],
        "files": len(glob.glob(os.path.join(out, "results", "*", "*.parquet"))),
        "windows": len(glob.glob(os.path.join(out, "results", "window-*"))),
        "command": pipe.shown_cmd(), "emulator": " ".join(emu.cmd[1:]),
    }


# ----------------------------------------------------------------------------- (2) memory

def run_memory(host: str, args: argparse.Namespace, tmp: str) -> Dict[str, Any]:
    topic, sub = _topic(host, "bench-memory")
    out = os.path.join(tmp, "memory")
    n = args.mem_records
    budget = args.startup_timeout_s + args.mem_duration_s + 60
    samples: List[Dict[str, Any]] = []
    with ClaudeEmulator(args.mem_rpm, args.latency_ms) as emu, \
            Pipeline(host, sub, out, emu.base_url, args, budget, os.path.join(tmp, "memory.log")) as pipe, \
            OutputPoller(out, interval_s=1.0) as poller:
        print(f"[memory] claude emulator: {' '.join(emu.cmd[1:])}", flush=True)
        print(f"[memory] pipeline: {pipe.shown_cmd()}", flush=True)
        warm_s = warm_up(host, topic, pipe, poller, args.startup_timeout_s)
        base_rss, nproc = tree_rss_kib(pipe.proc.pid)
        stop = threading.Event()
        t0 = time.time()

        load0 = os.getloadavg()[0]

        def sample() -> None:
            last_cpu, last_t = tree_cpu_s(pipe.proc.pid), time.time()
            while not stop.is_set():
                rss, procs = tree_rss_kib(pipe.proc.pid)
                cpu, now = tree_cpu_s(pipe.proc.pid), time.time()
                cpu_pct = round(100 * (cpu - last_cpu) / max(1e-9, now - last_t))
                last_cpu, last_t = cpu, now
                try:
                    st = emu.stats()
                    answered, limited = st["messages_succeeded"], st["rate_limited"]
                except OSError:
                    answered = limited = None
                samples.append({"t": round(time.time() - t0, 1), "rss_mib": round(rss / 1024, 1), "procs": procs, "cpu_pct": cpu_pct,
                                "landed": poller.count("mem-"), "answered": answered, "rate_limited": limited})
                stop.wait(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        print(f"[memory] warm-up landed {warm_s:.1f} s after start; RSS {base_rss / 1024:.0f} MiB "
              f"({nproc} process(es)); publishing {n} as fast as possible", flush=True)
        publisher = _publisher(single=False)
        records = datagen.generate_records(n, seed=11, customers=max(1, n // 5))
        futures = [publisher.publish(topic, _payload({**r, "id": "mem-" + r["id"]}, time.time())) for r in records]
        for f in futures:
            f.result(timeout=120)
        pub_s = time.time() - t0
        print(f"[memory] published {n} in {pub_s:.1f} s ({n / pub_s:.0f}/s); sampling until "
              f"{args.mem_duration_s:g} s", flush=True)
        next_print = 10.0
        done_at = None
        while time.time() - t0 < args.mem_duration_s and pipe.alive():
            # Everything landed: a few more samples (the plateau), then stop.
            if done_at is None and samples and samples[-1]["landed"] >= n:
                done_at = time.time()
                print(f"[memory] all {n} landed at t={samples[-1]['t']:.1f} s", flush=True)
            if done_at is not None and time.time() - done_at >= DONE_GRACE_S:
                break
            if samples and samples[-1]["t"] >= next_print:
                s = samples[-1]
                print(f"[memory]   t={s['t']:6.1f}s  rss={s['rss_mib']:7.1f} MiB  landed={s['landed']:6d}  "
                      f"answered={s['answered']}", flush=True)
                next_print += 10.0
            time.sleep(0.2)
        alive = pipe.alive()
        load1 = os.getloadavg()[0]
        stop.set()
        sampler.join()
        stats = emu.stats()
        stopped_at = time.time() - t0
        pipe.stop()
        stop_s = time.time() - t0 - stopped_at
    left = drain_count(host, sub)
    landed = poller.count("mem-")  # includes what the sink wrote while the pipeline was stopping
    pulled = None if left is None else n - left
    rss = [s["rss_mib"] for s in samples]
    half = [s for s in samples if s["t"] >= samples[-1]["t"] / 2] if samples else []
    slope = None
    if len(half) >= 3:
        ts, rs = [s["t"] for s in half], [s["rss_mib"] for s in half]
        mt, mr = statistics.fmean(ts), statistics.fmean(rs)
        den = sum((t - mt) ** 2 for t in ts)
        slope = round(60 * sum((t - mt) * (r - mr) for t, r in zip(ts, rs)) / den, 1) if den else None
    mid = samples[len(samples) // 2] if samples else {}
    at_landed = rss_at_landed(samples, n)
    return {
        "part": "memory", "mode": args.mode, "records": n, "rpm": args.mem_rpm,
        "publish_s": round(pub_s, 1), "duration_s": round(stopped_at, 1), "pipeline_alive_at_end": alive,
        "pipeline_stop_s": round(stop_s, 1),
        "warmup_landed_after_start_s": round(warm_s, 1),
        "rss_before_publish_mib": round(base_rss / 1024, 1),
        "rss_peak_mib": max(rss) if rss else None,
        "rss_first_mib": samples[0]["rss_mib"] if samples else None,
        "rss_middle_mib": mid.get("rss_mib"), "rss_middle_t": mid.get("t"),
        "rss_last_mib": samples[-1]["rss_mib"] if samples else None,
        "rss_slope_second_half_mib_per_min": slope,
        "rss_at_landed": at_landed,
        "growth_kib_per_record_after_first_quarter": growth_per_record(at_landed),
        "landed": landed, "dead_lettered": sum(1 for k in poller.dead if k.startswith("mem-")),
        "answered_by_emulator": stats["messages_succeeded"], "emulator_429": stats["rate_limited"],
        "left_in_subscription": left, "pulled_by_pipeline": pulled,
        "held_by_pipeline_at_stop": None if pulled is None else pulled - landed,
        "landed_rps": round(landed / max(1e-9, stopped_at), 2),
        "pipeline_cpu_pct_mean": round(statistics.fmean(x["cpu_pct"] for x in samples[1:])) if len(samples) > 1 else None,
        "loadavg_1min_start_end": [round(load0, 2), round(load1, 2)], "cpus": os.cpu_count(),
        "samples": samples,
        "command": pipe.shown_cmd(), "emulator": " ".join(emu.cmd[1:]),
    }


def rss_at_landed(samples: Sequence[Dict[str, Any]], n: int, parts: int = 4) -> List[Dict[str, Any]]:
    """RSS at the first sample where a quarter, half, ... of the n records had landed."""
    out = []
    for k in range(1, parts + 1):
        goal = n * k // parts
        hit = next((s for s in samples if goal and s["landed"] >= goal), None)
        if hit is not None:
            out.append({"landed_goal": goal, "t": hit["t"], "landed": hit["landed"], "rss_mib": hit["rss_mib"]})
    return out


def growth_per_record(at_landed: Sequence[Dict[str, Any]]) -> Optional[float]:
    """KiB of RSS per record landed between the first and the last milestone (the
    first quarter absorbs one-off warm-up: imports, caches, pools)."""
    if len(at_landed) < 2:
        return None
    a, b = at_landed[0], at_landed[-1]
    records = b["landed"] - a["landed"]
    return round(1024 * (b["rss_mib"] - a["rss_mib"]) / records, 2) if records else None


# ----------------------------------------------------------------------------- report

def _fmt(d: Dict[str, float]) -> str:
    if not d.get("n"):
        return "n/a"
    return f"{d['p50']:.2f} / {d['p95']:.2f} / {d['max']:.2f}"


def report(rows: Sequence[Dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        if r["part"] == "latency":
            lines += [
                f"latency ({r['mode']}, {r['records']} records at {r['publish_rate']:g}/s): "
                f"{r['results']} results, {r['dead_lettered']} dead-lettered, {r['missing']} missing",
                "  p50 / p95 / max seconds:",
                f"    publish -> Parquet file mtime:   {_fmt(r['latency_publish_to_mtime_s'])}",
                f"    publish -> seen by the poller:   {_fmt(r['latency_publish_to_seen_s'])}",
                f"    publish -> completed_at:         {_fmt(r['latency_publish_to_completed_at_s'])}",
                f"    completed_at -> file mtime:      {_fmt(r['completed_at_to_mtime_s'])}",
                f"  p50 publish -> mtime per tenth of the records (publish order): "
                f"{r['p50_mtime_latency_by_tenth_s']}",
                f"  over 5 s: {r['over_5s']}, over 10 s: {r['over_10s']}; slowest (id, published at +s, latency s): "
                f"{r['slowest'][:3]}",
                f"  throughput {r['throughput_rps']:.1f} results/s (first publish -> last file); "
                f"{r['files']} files in {r['windows']} windows",
                f"  pipeline CPU while publishing {r['pipeline_cpu_pct_while_publishing']}% of one core; "
                f"load average {r['loadavg_1min_start_end']} on {r['cpus']} CPUs",
            ]
        else:
            lines += [
                f"memory ({r['mode']}, {r['records']} published in {r['publish_s']:.1f} s, emulator "
                f"--rpm {r['rpm']:g}, {r['duration_s']:.0f} s):",
                f"  RSS MiB: before {r['rss_before_publish_mib']}, first {r['rss_first_mib']}, middle "
                f"{r['rss_middle_mib']} (t={r['rss_middle_t']} s), last {r['rss_last_mib']}, peak {r['rss_peak_mib']}; "
                f"slope over the second half {r['rss_slope_second_half_mib_per_min']} MiB/min",
                f"  landed {r['landed']} ({r['landed_rps']:.1f}/s), emulator answered {r['answered_by_emulator']}, "
                f"429s {r['emulator_429']}; pipeline CPU {r['pipeline_cpu_pct_mean']}% of one core; "
                f"load average {r['loadavg_1min_start_end']} on {r['cpus']} CPUs",
                f"  left in the subscription {r['left_in_subscription']}, pulled by the pipeline "
                f"{r['pulled_by_pipeline']}, held in the pipeline at stop {r['held_by_pipeline_at_stop']}",
                "  RSS when landed reached: " + ", ".join(
                    f"{m['landed_goal']} -> {m['rss_mib']} MiB (t={m['t']:.0f} s)" for m in r["rss_at_landed"])
                + f"; growth after the first milestone {r['growth_kib_per_record_after_first_quarter']} KiB/record",
                "  timeline (every 10 s): t s | RSS MiB | landed | answered by the emulator | pipeline CPU %",
            ]
            step = 10.0
            for s in r["samples"]:
                if s["t"] >= step or s is r["samples"][0] or s is r["samples"][-1]:
                    lines.append(f"    {s['t']:6.1f} | {s['rss_mib']:7.1f} | {s['landed']:6d} | {s['answered']} | {s['cpu_pct']}")
                    while step <= s["t"]:
                        step += 10.0
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.streaming", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="latency,memory", help="comma-separated subset of: latency, memory")
    ap.add_argument("--mode", default="sync", choices=("sync", "packed", "batch", "packed-batch"))
    ap.add_argument("--window-secs", type=float, default=10)
    ap.add_argument("--max-buffering-secs", type=float, default=2)
    ap.add_argument("--latency-ms", type=float, default=50, help="Claude emulator latency (both parts)")
    ap.add_argument("--records", type=int, default=1000, help="(latency) messages published")
    ap.add_argument("--rate", type=float, default=10, help="(latency) messages per second")
    ap.add_argument("--drain-timeout-s", type=float, default=60,
                    help="(latency) wait at most this long after the last publish")
    ap.add_argument("--mem-records", type=int, default=20000, help="(memory) messages published at once")
    ap.add_argument("--mem-rpm", type=float, default=600, help="(memory) Claude emulator --rpm")
    ap.add_argument("--mem-duration-s", type=float, default=120,
                    help="(memory) sample at most this long from the start of publishing, then stop "
                         "(it stops earlier, 15 s after every record has landed)")
    ap.add_argument("--startup-timeout-s", type=float, default=120,
                    help="wait at most this long for the warm-up records to land")
    ap.add_argument("--pipeline-arg", action="append", default=[],
                    help="extra flag for the pipeline, e.g. --pipeline-arg=--concurrency=16 (repeatable)")
    ap.add_argument("--json", help="also write the measures (with the memory samples) to this file")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (outputs, logs)")
    args = ap.parse_args(argv)
    parts = args.parts.split(",")
    if shutil.which("gcloud") is None:
        print("gcloud (with the Pub/Sub emulator) is not installed", file=sys.stderr)
        return 2
    rows = []
    tmp = tempfile.mkdtemp(prefix="bench-streaming-")
    started = time.monotonic()
    try:
        with pubsub() as host:
            print(f"pubsub emulator on {host}", flush=True)
            if "latency" in parts:
                rows.append(run_latency(host, args, tmp))
                print(json.dumps(rows[-1], indent=1), flush=True)
            if "memory" in parts:
                rows.append(run_memory(host, args, tmp))
                r = {k: v for k, v in rows[-1].items() if k != "samples"}
                print(json.dumps(r, indent=1), flush=True)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(report(rows))
    print(f"\ntotal wall {time.monotonic() - started:.0f} s")
    procs.save_rows(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
