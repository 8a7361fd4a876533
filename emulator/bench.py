"""Timing of a 100,000-request batch through the real SDK: `python -m emulator.bench`.

Creates one batch of N requests (each ~600 bytes of params, a packed-style
item tag and a JSON schema), waits for it to end, streams the results back
with `client.messages.batches.results()` and prints the time of each step.
The emulator must never be the bottleneck of a pipeline benchmark.
"""
from __future__ import annotations

import argparse
import time

import anthropic

import emulator

SCHEMA = {"type": "object", "properties": {
    "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
    "summary": {"type": "string", "maxLength": 80}}, "required": ["sentiment", "summary"],
    "additionalProperties": False}


def make_requests(n: int):
    filler = "Customer wrote about a delayed parcel and asked for a refund of the shipping fee. " * 4
    for i in range(n):
        yield {"custom_id": f"req-{i:06d}", "params": {
            "model": "claude-haiku-4-5", "max_tokens": 256,
            "system": "Classify the sentiment of the record and summarise it in one line.",
            "messages": [{"role": "user", "content": f'<item id="r{i}">{filler}#{i}</item>'}],
            "output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=100_000)
    args = ap.parse_args()
    reqs = list(make_requests(args.n))
    import json

    print(f"params bytes per request ~{len(json.dumps(reqs[0]['params']))}")
    with emulator.running() as emu:
        client = anthropic.Anthropic(api_key="bench", base_url=emu.base_url, max_retries=0, timeout=600)
        t0 = time.perf_counter()
        batch = client.messages.batches.create(requests=reqs)
        t1 = time.perf_counter()
        while client.messages.batches.retrieve(batch.id).processing_status != "ended":
            time.sleep(0.05)
        t2 = time.perf_counter()
        n = sum(1 for r in client.messages.batches.results(batch.id) if r.result.type == "succeeded")
        t3 = time.perf_counter()
        assert n == args.n, n
        s = emu.stats(items=False)
        done = client.messages.batches.retrieve(batch.id)
        server_processing = (done.ended_at - done.created_at).total_seconds()
        print(f"create {t1 - t0:.2f}s  process {t2 - t1:.2f}s (server-side {server_processing:.2f}s)  "
              f"results {t3 - t2:.2f}s  total {t3 - t0:.2f}s  for {args.n} requests "
              f"(items sent {s['items_sent_total']})")


if __name__ == "__main__":
    main()
