"""Streaming end to end: the real Pub/Sub emulator, the DirectRunner in
streaming mode, the Claude emulator; every published message must land in
results or dead_letter exactly once (bounded wait)."""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from bench import datagen
from tests.pubsub_emulator import create_topic_and_subscription, publish, pubsub_emulator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BAD = [b"not json at all", b"[1, 2, 3]", b'{"id": "", "text": "empty id"}', b'{"text": "no id"}',
       json.dumps({"id": "dup-1", "customer_id": "c", "subject": "s", "channel": "email", "text": "first"}).encode(),
       json.dumps({"id": "dup-1", "customer_id": "c", "subject": "s", "channel": "email", "text": "second"}).encode()]


@pytest.fixture(scope="module")
def pubsub():
    with pubsub_emulator() as host:
        yield host


def _rows(out):
    results, dead = [], []
    for path in glob.glob(os.path.join(out, "results", "*", "*.parquet")):
        results += pq.read_table(path, columns=["record_id", "mode", "output"]).to_pylist()
    for path in glob.glob(os.path.join(out, "dead_letter", "*", "*.parquet")):
        dead += pq.read_table(path, columns=["record_id", "error_type"]).to_pylist()
    return results, dead


#: Upper bound on the wait for every row to land (a failure, not a timing goal).
LANDING_TIMEOUT_S = 420


def _stream(pubsub, emu, tmp_path, sub, payloads, extra=()):
    """Runs the streaming job on `sub`, publishes `payloads` to its topic, waits
    (bounded) until as many rows as payloads have landed, a little longer for
    any extra (duplicate) row, then stops the job, which must then leave by
    itself with exit code 0 (its runner's threads do not hold the interpreter).
    -> (results, dead)."""
    topic, subscription = sub
    out = str(tmp_path / "out")
    env = dict(os.environ, PUBSUB_EMULATOR_HOST=pubsub, ANTHROPIC_API_KEY="test-key-not-a-secret")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "--task", "samples/sentiment.yaml", "--input-subscription",
         subscription, "--output", out, "--api-base", emu.base_url,
         "--window-secs", "10", "--max-buffering-secs", "1", "--poll-interval-s", "0.1",
         "--poll-max-interval-s", "0.5", "--streaming-duration-s", "600", *extra],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        publish(pubsub, topic, payloads)
        # Generous: ~60 s on an idle 2-core machine, several times that when it is shared.
        deadline = time.monotonic() + LANDING_TIMEOUT_S
        while True:
            results, dead = _rows(out)
            if len(results) + len(dead) >= len(payloads):
                break
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, f"only {len(results)} + {len(dead)} of {len(payloads)} landed"
            time.sleep(1)
        time.sleep(2)  # anything extra (a duplicate row) would land now
        rows = _rows(out)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = "still running 60 s after SIGTERM"
    assert code == 0, code
    return rows


@pytest.mark.parametrize("mode,N_GOOD", [("batch", 1000), ("packed", 200)])
def test_published_messages_all_land_once(pubsub, emu, tmp_path, mode, N_GOOD):
    sub = create_topic_and_subscription(pubsub, f"records-{mode}", f"records-{mode}-sub")
    records = list(datagen.generate_records(N_GOOD, seed=9, customers=40))
    results, dead = _stream(pubsub, emu, tmp_path, sub, [json.dumps(r).encode() for r in records] + BAD,
                            ["--mode", mode, "--pack-key-field", "customer_id"])
    ids = [r["record_id"] for r in results]
    assert len(ids) == len(set(ids)) == N_GOOD + 1  # + the first dup-1
    assert set(ids) == {r["id"] for r in records} | {"dup-1"}
    assert all(r["output"] is not None and r["mode"] == mode for r in results)
    reasons = sorted(d["error_type"] for d in dead)
    assert reasons == sorted(["malformed_json", "not_an_object", "empty_id", "missing_id", "duplicate_id"])
    assert len(results) + len(dead) == N_GOOD + len(BAD)


def test_streaming_sync_sheds_a_full_queue_to_the_batch_api(pubsub, emu, tmp_path):
    """--shed-to batch in a streaming job: answers slowed to 300 ms and
    --max-in-flight 2 keep the Messages queue full, so part of the records go
    through Message Batches instead; every record still lands exactly once."""
    n = 40
    sub = create_topic_and_subscription(pubsub, "records-shed", "records-shed-sub")
    records = list(datagen.generate_records(n, seed=11, customers=10))
    emu.configure(latency_ms=300.0)
    try:
        results, dead = _stream(pubsub, emu, tmp_path, sub, [json.dumps(r).encode() for r in records],
                                ["--mode", "sync", "--shed-to", "batch", "--max-in-flight", "2"])
    finally:
        emu.configure(latency_ms=0.0)
    ids = [r["record_id"] for r in results]
    assert not dead and len(ids) == len(set(ids)) == n and set(ids) == {r["id"] for r in records}
    modes = {r["mode"] for r in results}
    assert modes == {"sync", "batch"}, modes  # some answered online, the shed ones by batch
