"""Load shedding on the Messages route (`transforms/api/shedding.py`, `--shed-to`).

The decision is a pure function, tested over every combination of its
inputs; the queue bookkeeping and the limiter's backlog projection are tested
on their own; then the real pipeline (DirectRunner, real SDK, the emulator
enforcing a tight RPM) shows each --shed-to choice end to end, one in, one out.
"""
from __future__ import annotations

import itertools
import json
import threading

import pytest

from bench import datagen
from pipeline.run import EXIT_OK, run
from pipeline.summary import render
from tests.conftest import assert_one_in_one_out, read_output
from transforms.api import shedding
from transforms.api.ratelimit import Limits, RateLimiter
from transforms.api.shedding import Decision, InFlight, Ticket, Verdict, decide, is_urgent

TASK = "samples/sentiment.yaml"

# ----------------------------------------------------------------------------- the decision

NOW = 1_000_000.0
LIMIT = 10
#: (depth, size): the queue's fill states against LIMIT.
FILLS = {
    "empty": (0, 3),
    "empty, work larger than the bound": (0, LIMIT + 5),
    "room": (4, 3),
    "exactly full after": (7, 3),
    "one over": (8, 3),
    "full": (LIMIT, 1),
}
#: deadline_at, projected wait: (name, deadline, projection)
TIMES = {
    "no deadline": (None, 50.0),
    "no deadline, unknown projection": (None, None),
    "meets the deadline": (NOW + 60, 30.0),
    "exactly at the deadline": (NOW + 60, 60.0),
    "misses the deadline": (NOW + 60, 61.0),
    "unknown projection": (NOW + 60, None),
}


def _expected(fill: str, timing: str, urgent: bool, shed_to: str) -> Verdict:
    """The policy, written as a table rather than as code paths."""
    depth, size = FILLS[fill]
    over_bound = fill in ("one over", "full")
    deadline, projected = TIMES[timing]
    if shed_to == "wait" or urgent:
        return Verdict.WAIT if over_bound else Verdict.ADMIT      # backpressure only
    if over_bound:
        return Verdict.SHED
    if timing == "misses the deadline":
        return Verdict.SHED
    if timing == "unknown projection":
        return Verdict.ADMIT if depth == 0 else Verdict.WAIT    # the first one teaches the limits
    return Verdict.ADMIT


@pytest.mark.parametrize("fill,timing,urgent,shed_to", list(itertools.product(
    FILLS, TIMES, (False, True), shedding.SHED_TO)))
def test_decision_for_every_combination(fill, timing, urgent, shed_to):
    depth, size = FILLS[fill]
    deadline, projected = TIMES[timing]
    got = decide(depth=depth, size=size, max_in_flight=LIMIT, projected_wait_s=projected, now=NOW,
                 deadline_at=deadline, urgent=urgent, shed_to=shed_to)
    assert got.verdict is _expected(fill, timing, urgent, shed_to)
    assert bool(got.why) == (got.verdict is Verdict.SHED)  # a shed work always says why


def test_shed_messages_say_why():
    full = decide(depth=LIMIT, size=1, max_in_flight=LIMIT, projected_wait_s=None, now=NOW,
                  deadline_at=None, urgent=False, shed_to="dead-letter")
    assert "queue is full" in full.why and f"{LIMIT} of --max-in-flight {LIMIT}" in full.why
    late = decide(depth=0, size=1, max_in_flight=LIMIT, projected_wait_s=3600.0, now=0.0,
                  deadline_at=60.0, urgent=False, shed_to="batch")
    assert late.why == ("shed: rate limits project it to be sent at 1970-01-01T01:00:00Z, "
                        "after --deadline 1970-01-01T00:01:00Z")


def test_decision_rejects_an_unknown_shed_to():
    with pytest.raises(ValueError, match="shed_to"):
        decide(depth=0, size=1, max_in_flight=1, projected_wait_s=0.0, now=NOW, deadline_at=None,
               urgent=False, shed_to="drop")


@pytest.mark.parametrize("value,urgent", [
    (True, True), (False, False), (None, False), (1, True), (0, False), (2.5, True), (0.0, False),
    ("true", True), ("yes", True), ("1", True), ("high", True), ("TRUE ", True),
    ("false", False), ("False", False), ("0", False), ("no", False), ("", False), ("  ", False),
    ("off", False), ("null", False), ([], False), (["x"], True)])
def test_is_urgent(value, urgent):
    assert is_urgent(value) is urgent


def test_default_max_in_flight_is_one_pool_element():
    assert shedding.default_max_in_flight(8, 1) == 32
    assert shedding.default_max_in_flight(8, 20) == 640
    assert shedding.default_max_in_flight(1, 0) == 4


def test_flags_reach_the_messages_settings_and_are_validated(tmp_path):
    from apache_beam.options.pipeline_options import PipelineOptions
    from pipeline.build import resolve_job
    from pipeline.options import ClaudeOptions, validate

    def opts(*extra):
        return PipelineOptions(["--task", TASK, "--input", "in.jsonl", "--output", str(tmp_path / "out"),
                                "--mode", "sync", *extra]).view_as(ClaudeOptions)

    default = resolve_job(opts(), "http://127.0.0.1:1", local=False)
    assert default.process.messages.shed_to == "wait" and default.process.messages.max_in_flight is None
    assert default.process.ledger is None  # nothing goes by batch
    o = opts("--max-in-flight", "50", "--shed-to", "batch", "--urgent-field", "priority")
    validate(o)
    job = resolve_job(o, "http://127.0.0.1:1", local=False)
    m = job.process.messages
    assert (m.max_in_flight, m.shed_to, m.urgent_field) == (50, "batch", "priority")
    assert job.process.ledger is not None  # shed works are submitted through the ledger
    with pytest.raises(ValueError, match="--max-in-flight"):
        validate(opts("--max-in-flight", "0"))
    with pytest.raises(SystemExit):
        opts("--shed-to", "drop")
    # the batch modes never wait on the limiter: a --shed-to there is a mistake, said early
    with pytest.raises(ValueError, match="--shed-to dead-letter applies to --mode sync and packed"):
        validate(opts("--shed-to", "dead-letter", "--mode", "batch"))
    validate(opts("--shed-to", "wait", "--mode", "packed-batch"))


# ----------------------------------------------------------------------------- the queue

def _always(verdict):
    return lambda depth, pending: Decision(verdict)


def test_inflight_books_admissions_and_releases_them():
    q = InFlight()
    assert q.admit(3, (1.0, 100.0, 50.0), _always(Verdict.ADMIT)).verdict is Verdict.ADMIT
    assert q.admit(2, (1.0, 10.0, 5.0), _always(Verdict.SHED)).verdict is Verdict.SHED  # not booked
    assert q.snapshot() == (3, (1.0, 100.0, 50.0))
    t = Ticket(q, 3, (1.0, 100.0, 50.0))
    t.sent()
    t.sent()  # idempotent: a retried call is granted again, but leaves the queue once
    assert q.snapshot() == (3, (0.0, 0.0, 0.0))
    t.close()
    t.close()
    assert q.snapshot() == (0, (0.0, 0.0, 0.0))


def test_inflight_close_without_send_releases_both():
    q = InFlight()
    q.admit(4, (1.0, 7.0, 9.0), _always(Verdict.ADMIT))
    Ticket(q, 4, (1.0, 7.0, 9.0)).close()  # e.g. refused by the budget before any call
    assert q.snapshot() == (0, (0.0, 0.0, 0.0))


def test_inflight_passes_the_queue_to_the_decision_and_waits_until_room():
    q = InFlight()
    q.admit(5, (1.0, 0.0, 0.0), _always(Verdict.ADMIT))
    seen = []

    def room_for_three(depth, pending):
        seen.append((depth, pending))
        return Decision(Verdict.ADMIT if depth + 3 <= 5 else Verdict.WAIT)

    result = {}
    waiter = threading.Thread(target=lambda: result.setdefault("d", q.admit(3, (1.0, 0.0, 0.0), room_for_three)))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive() and seen[0] == (5, (1.0, 0.0, 0.0))  # blocked: the queue is full
    Ticket(q, 5, (1.0, 0.0, 0.0)).close()
    waiter.join(5)
    assert not waiter.is_alive() and result["d"].verdict is Verdict.ADMIT
    assert q.snapshot() == (3, (1.0, 0.0, 0.0))


def test_inflight_never_overbooks_under_threads():
    q = InFlight()
    peak = []
    lock = threading.Lock()

    def worker():
        for _ in range(200):
            d = q.admit(1, (1.0, 0.0, 0.0), lambda depth, p: Decision(
                Verdict.ADMIT if depth < 4 else Verdict.SHED))
            if d.verdict is Verdict.ADMIT:
                with lock:
                    peak.append(q.snapshot()[0])
                Ticket(q, 1, (1.0, 0.0, 0.0)).close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak and max(peak) <= 4
    assert q.snapshot() == (0, (0.0, 0.0, 0.0))


# ----------------------------------------------------------------------------- the projection

class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_queue_wait_is_the_backlog_over_the_refill_rate():
    clock = Clock()
    lim = RateLimiter(Limits(rpm=60, itpm=6000, otpm=600), clock=clock, burst_seconds=2.0,
                      learn_from_headers=False)  # 1 req/s cap 2; 100 in/s cap 200; 10 out/s cap 20
    assert lim.estimate_queue_wait(1, 10, 1) == 0.0
    assert lim.estimate_queue_wait(2, 10, 1) == 0.0            # the burst covers two
    assert lim.estimate_queue_wait(12, 10, 1) == pytest.approx(10.0)   # 10 more at 1/s
    assert lim.estimate_queue_wait(1, 1200, 1) == pytest.approx(10.0)  # 1000 tokens past the burst
    assert lim.estimate_queue_wait(1, 10, 320) == pytest.approx(30.0)  # output binds
    # a single request bigger than the bucket: estimate_wait caps it, the backlog does not
    assert lim.estimate_wait(10, 1) < lim.estimate_queue_wait(10, 10, 1)
    r = lim.acquire(10, 1)
    r.settle(10, 1)
    lim.acquire(10, 1).settle(10, 1)
    assert lim.estimate_queue_wait(1, 10, 1) == pytest.approx(1.0)  # bucket empty: next in 1 s
    clock.now += 1.0
    assert lim.estimate_queue_wait(1, 10, 1) == 0.0


def test_queue_wait_includes_a_429_pause_and_ignores_unlimited_dims():
    clock = Clock()
    lim = RateLimiter(Limits(rpm=600), clock=clock, learn_from_headers=False)
    assert lim.estimate_queue_wait(1, 10 ** 9, 10 ** 9) == 0.0  # tokens unlimited
    lim.penalize(7.0)
    assert lim.estimate_queue_wait(1, 1, 1) == pytest.approx(7.0)


# ----------------------------------------------------------------------------- the pipeline

N = 20
#: The emulator enforces 60 RPM with a 3 s bucket (3 at once, then 1/s), and
#: the job is told the same limit: 20 sync records need ~17 s, so a deadline
#: 10 s after the job is built cannot be met by all of them, while a loaded
#: machine (start-up of up to ~8 s before the first call) still sends some.
RPM = 60
DEADLINE_S = 10


@pytest.fixture
def tight_emu(emu):
    emu.configure(faults={}, seed=0, rpm=RPM, bucket_capacity_s=3.0, latency_ms=0.0)
    emu.reset()
    yield emu
    emu.configure(faults={}, seed=0, rpm=None, bucket_capacity_s=1.0, latency_ms=0.0)
    emu.reset()


def _input(tmp_path, urgent_every=None):
    path = tmp_path / "in.jsonl"
    rows = list(datagen.generate_records(N, seed=5, customers=6))
    for i, row in enumerate(rows):
        if urgent_every:
            row["urgent"] = "true" if i % urgent_every == 0 else "false"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _run(emu, tmp_path, data, mode, shed_to, *extra):
    out = tmp_path / f"out-{mode}-{shed_to}"
    args = ["--task", TASK, "--input", data, "--output", str(out), "--mode", mode,
            "--pack-key-field", "customer_id", "--pack-size", "3", "--api-base", emu.base_url,
            "--shed-to", shed_to, *extra]
    assert run(args) == EXIT_OK
    results, dead = read_output(str(out))
    assert_one_in_one_out(data, results, dead)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["one_in_one_out"] is True
    assert (summary["results"], summary["dead_letters"]) == (len(results), len(dead))
    return results, dead, summary


def _late(*extra):
    return ("--rpm", str(RPM), "--deadline", str(DEADLINE_S), *extra)


def test_deadline_sheds_to_the_dead_letter(tight_emu, api_env, tmp_path):
    data = _input(tmp_path)
    results, dead, summary = _run(tight_emu, tmp_path, data, "sync", "dead-letter", *_late())
    shed = [d for d in dead if d["error_type"] == "shed"]
    assert shed and results, (len(results), len(dead))
    assert len(shed) == len(dead) == summary["shed_records"] == summary["dead_letters_by_reason"]["shed"]
    assert all("after --deadline" in d["error_message"] and d["stage"] == "submit" and d["attempts"] == 0
               for d in shed)
    # never sent: the API saw exactly the answered ids
    stats = tight_emu.stats()
    assert set(stats["items_sent"]) == {r["record_id"] for r in results}
    assert not {d["record_id"] for d in shed} & set(stats["items_sent"])
    assert "shed records" in render(summary) and f"{len(shed)} to the dead letter" in render(summary)


@pytest.mark.parametrize("mode,batch_mode", [("sync", "batch"), ("packed", "packed-batch")])
def test_deadline_sheds_to_the_batch_api(tight_emu, api_env, tmp_path, mode, batch_mode):
    data = _input(tmp_path)
    rpm = RPM if mode == "sync" else RPM // 3  # packs of 3 are 3x fewer requests
    results, dead, summary = _run(tight_emu, tmp_path, data, mode, "batch",
                                  "--rpm", str(rpm), "--deadline", str(DEADLINE_S))
    assert not dead, [(d["record_id"], d["error_type"], d["error_message"]) for d in dead]
    via_batch = [r for r in results if r["batch_id"]]
    online = [r for r in results if not r["batch_id"]]
    assert via_batch and online
    assert {r["mode"] for r in via_batch} == {batch_mode} and {r["mode"] for r in online} == {mode}
    assert len(via_batch) == summary["shed_records"]
    stats = tight_emu.stats()
    assert stats["batches_created"] >= 1
    assert stats["batch_requests_received"] == (len(via_batch) if mode == "sync" else
                                                len({r["custom_id"] for r in via_batch}))
    assert stats["duplicates_billed"] == 0 and set(stats["items_answered"].values()) == {1}
    # the batch discount is on their rows
    assert all(r["cost_usd"] > 0 for r in results)


def test_wait_sheds_nothing(tight_emu, api_env, tmp_path):
    data = _input(tmp_path)
    results, dead, summary = _run(tight_emu, tmp_path, data, "sync", "wait", *_late())
    assert len(results) == N and not dead
    assert summary["shed_records"] == 0 and not any(r["batch_id"] for r in results)
    stats = tight_emu.stats()
    assert stats["batches_created"] == 0
    # counted on the pool threads, reported by the DoFn: the summary sees every call
    assert summary["api"]["requests"] == sum(stats["requests"]["POST /v1/messages"].values()) == N
    assert summary["metrics"]["output_tokens"] == sum(r["output_tokens"] for r in results)


def test_full_queue_sheds_all_but_urgent_records(emu, api_env, tmp_path):
    """No deadline, no rate limit: only --max-in-flight sheds. Slow answers
    (300 ms) keep the first works in flight while the rest arrive."""
    emu.configure(faults={}, seed=0, rpm=None, latency_ms=300.0)
    emu.reset()
    try:
        data = _input(tmp_path, urgent_every=3)
        results, dead, summary = _run(emu, tmp_path, data, "sync", "dead-letter",
                                      "--max-in-flight", "2", "--urgent-field", "urgent")
    finally:
        emu.configure(latency_ms=0.0)
        emu.reset()
    urgent = {f"em-{i + 1:06d}" for i in range(N) if i % 3 == 0}
    assert urgent <= {r["record_id"] for r in results}  # urgent records are never shed
    assert dead and all(d["error_type"] == "shed" and "queue is full" in d["error_message"] for d in dead)
    assert summary["shed_records"] == len(dead)
