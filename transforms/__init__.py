"""Beam transforms that run records through Claude; the tree follows the flow:

    io/        read files or Pub/Sub, normalize rows into Records; write Parquet
    screen/    prompt-injection screening before anything is sent
    batching   the bounded stateful batcher (count, bytes, tokens, time)
    prompts/   task, requests, packing, answers (parse + validate), result rows
    api/       client, retries, rate limits, budget, shedding, prices, tokens
    messages   the Messages route (sync, packed)
    batches/   the Message Batches route (submit once via the ledger, collect)
    process    ProcessWithClaude: the public composite of all of the above
    planning/  what a job will cost and take in every mode, before it runs

The public names below are imported on first use, so that importing a pure
module (say ``transforms.prompts.packing``) does not load Beam.
"""
from typing import Any

__all__ = ["ProcessWithClaude", "ProcessSettings", "ApiSettings", "FieldMap", "MessagesSettings",
           "PollSettings", "RetryPolicy", "Mode", "results_schema", "DEAD_LETTER_SCHEMA"]

_HOMES = {
    "ProcessWithClaude": "transforms.process", "ProcessSettings": "transforms.process",
    "ApiSettings": "transforms.api.client", "RetryPolicy": "transforms.api.client",
    "FieldMap": "transforms.io.normalize", "MessagesSettings": "transforms.messages",
    "PollSettings": "transforms.batches.collect", "Mode": "transforms.modes",
    "results_schema": "transforms.io.schema", "DEAD_LETTER_SCHEMA": "transforms.io.schema",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'transforms' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(_HOMES[name]), name)
