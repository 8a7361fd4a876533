"""`make stream-demo`: the streaming job end to end on this machine.

Starts the Pub/Sub emulator and the Claude emulator, publishes the sample
emails, runs `python -m pipeline --input-subscription ...` for a while, and
prints what landed per window."""
from __future__ import annotations

import glob
import os
import subprocess
import sys

import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.pubsub_emulator import create_topic_and_subscription, publish, pubsub_emulator  # noqa: E402

OUT = os.path.join(ROOT, "out", "stream-demo")
RUN_S = 60


def main() -> int:
    import emulator
    with pubsub_emulator() as host, emulator.running() as claude:
        topic, sub = create_topic_and_subscription(host, "emails", "emails-sub")
        print(f"Pub/Sub emulator at {host}; topic {topic}")
        env = dict(os.environ, PUBSUB_EMULATOR_HOST=host, ANTHROPIC_API_KEY="demo-key")
        subprocess.run(["rm", "-rf", OUT])
        cmd = [sys.executable, "-m", "pipeline", "--task", "samples/sentiment.yaml", "--input-subscription", sub,
               "--output", OUT, "--mode", "packed", "--pack-key-field", "customer_id", "--api-base",
               claude.base_url, "--window-secs", "10", "--max-buffering-secs", "2",
               "--streaming-duration-s", str(RUN_S)]
        print("running:", " ".join(cmd))
        job = subprocess.Popen(cmd, cwd=ROOT, env=env)
        with open(os.path.join(ROOT, "samples", "emails.jsonl"), "rb") as f:
            publish(host, topic, [line.rstrip(b"\n") for line in f if line.strip()])
        print(f"published the sample; the job runs for {RUN_S} s")
        job.wait()
    for kind in ("results", "dead_letter"):
        for window in sorted(glob.glob(os.path.join(OUT, kind, "window-*"))):
            n = sum(pq.read_metadata(p).num_rows for p in glob.glob(os.path.join(window, "*.parquet")))
            print(f"{kind:<12} {os.path.basename(window)}: {n} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
