"""Counters that let a test prove what the API saw and billed.

Per item id (the `<item id=...>` of the prompts):

* items_sent[id]      times the id appeared in any request (Messages or batch);
* items_answered[id]  times it got a complete, valid answer that was billed
                      and delivered (a dropped, duplicated, schema-violating,
                      truncated or invalid-JSON answer does not count);
* duplicates_billed   times a billed response (200 Messages, succeeded batch
                      item) covered an id that had already been validly
                      answered: money spent twice on one record.
                      duplicate_ids[id] counts these per id.

Plain dicts incremented in the event loop: cheap at 100,000 items.
"""
from __future__ import annotations

import collections
from typing import Any, Dict, Iterable


class Stats:
    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.requests: Dict[str, Dict[str, int]] = collections.defaultdict(lambda: collections.defaultdict(int))
        self.messages_calls = 0
        self.messages_succeeded = 0
        self.count_tokens_calls = 0
        self.rate_limited = 0
        self.batches_created = 0
        self.batch_requests_received = 0
        self.batch_results: Dict[str, int] = {"succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        self.items_sent: Dict[str, int] = {}
        self.items_answered: Dict[str, int] = {}
        self.duplicates_billed = 0
        self.duplicate_ids: Dict[str, int] = {}
        self.faults_fired: Dict[str, int] = collections.defaultdict(int)
        self.tokens: Dict[str, Dict[str, int]] = {
            tier: {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0,
                   "cache_read_input_tokens": 0}
            for tier in ("standard", "batch")}

    def route(self, key: str, status: Any) -> None:
        self.requests[key][str(status)] += 1

    def sent(self, ids: Iterable[str]) -> None:
        d = self.items_sent
        for i in ids:
            d[i] = d.get(i, 0) + 1

    def billed(self, ids: Iterable[str], answered: Iterable[str], usage: Dict[str, int], tier: str) -> None:
        """A billed response covering `ids`, of which `answered` validly."""
        done = self.items_answered
        get = done.get
        for i in ids:
            if get(i, 0) > 0:
                self.duplicates_billed += 1
                self.duplicate_ids[i] = self.duplicate_ids.get(i, 0) + 1
        for i in answered:
            done[i] = get(i, 0) + 1
        t = self.tokens[tier]
        for k in t:
            t[k] += usage.get(k, 0)

    def fault(self, name: str) -> None:
        self.faults_fired[name] += 1

    def snapshot(self, items: bool = True) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            "requests": {k: dict(v) for k, v in self.requests.items()},
            "messages_calls": self.messages_calls,
            "messages_succeeded": self.messages_succeeded,
            "count_tokens_calls": self.count_tokens_calls,
            "rate_limited": self.rate_limited,
            "batches_created": self.batches_created,
            "batch_requests_received": self.batch_requests_received,
            "batch_results": dict(self.batch_results),
            "items_sent_total": sum(self.items_sent.values()),
            "items_unique_sent": len(self.items_sent),
            "items_answered_total": sum(self.items_answered.values()),
            "items_unique_answered": len(self.items_answered),
            "duplicates_billed": self.duplicates_billed,
            "duplicate_ids": dict(self.duplicate_ids),
            "faults_fired": dict(self.faults_fired),
            "tokens": {k: dict(v) for k, v in self.tokens.items()},
        }
        if items:
            out["items_sent"] = dict(self.items_sent)
            out["items_answered"] = dict(self.items_answered)
        return out
