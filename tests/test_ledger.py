"""The batch ledger (transforms/batches/ledger/): one contract, three storages.

Backends:
* ``local``   - LocalLedger in tmp_path;
* ``gcs``     - GcsLedger on the stock gcp-storage-emulator. It ignores
  generation preconditions, so every test that needs them is an expected
  failure there (strict: if it ever passes, the emulator got fixed or the test
  stopped testing the precondition);
* ``gcs-cas`` - GcsLedger on the same emulator with preconditions enforced
  (tests/gcs_emulator.py), which is how Cloud Storage behaves.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import pickle
import subprocess
import sys
import threading
import time
import uuid
from typing import Callable, Dict, List

import pytest

from tests.conftest import fake_key
from tests.gcs_emulator import (gcs_emulator, gcs_emulator_cas,  # noqa: F401 - fixtures
                                honours_generation_preconditions)
from transforms.batches import ledger as L
from transforms.batches.ledger import (CREATED, ENDED, FAILED, RESERVED, DuplicateBatch, GcsLedger, LedgerConflict,
                               LedgerEntry, LedgerSecretError, LocalLedger, open_ledger, submission_key)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_CAS_REASON = ("gcp-storage-emulator ignores ifGenerationMatch (no 412 on a mismatch), "
                 "so create-if-absent and compare-and-swap cannot hold on it")


def key(n) -> str:
    return submission_key([f"cid-{n}"], "params")


# --------------------------------------------------------------------------- backends

@dataclasses.dataclass
class Backend:
    name: str
    cas: bool  # does the storage enforce the preconditions the ledger relies on?
    location: str
    raw: Callable[[str], bytes]  # stored bytes of an entry, read around the ledger

    def make(self, **kwargs) -> L.Ledger:
        """A fresh Ledger on the same location: a separate writer."""
        return open_ledger(self.location, **kwargs)


_PROBES: Dict[str, bool] = {}


def _probe(url: str) -> bool:
    if url not in _PROBES:
        _PROBES[url] = honours_generation_preconditions(url)
    return _PROBES[url]


@pytest.fixture(params=["local", "gcs", "gcs-cas"])
def backend(request, tmp_path, monkeypatch) -> Backend:
    if request.param == "local":
        directory = str(tmp_path / "ledger")

        def read_file(k: str) -> bytes:
            with open(os.path.join(directory, "entries", k + ".json"), "rb") as f:
                return f.read()

        return Backend("local", True, directory, read_file)
    emu = request.getfixturevalue("gcs_emulator" if request.param == "gcs" else "gcs_emulator_cas")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emu.url)
    prefix = f"t-{uuid.uuid4().hex[:12]}"

    def raw(k: str) -> bytes:
        return L.storage_client().bucket(emu.bucket).blob(f"{prefix}/entries/{k}.json").download_as_bytes()

    return Backend(request.param, _probe(emu.url), f"gs://{emu.bucket}/{prefix}", raw)


@pytest.fixture
def cas_backend(backend, request) -> Backend:
    """A backend for tests that rely on atomic create / compare-and-swap."""
    if not backend.cas:
        request.applymarker(pytest.mark.xfail(reason=NO_CAS_REASON, strict=True))
    return backend


def clock_at(t: dt.datetime) -> Callable[[], dt.datetime]:
    return lambda: t


def run_threads(n: int, fn: Callable[[int], object]) -> List[object]:
    barrier = threading.Barrier(n)
    results: List[object] = [None] * n
    errors: List[BaseException] = []

    def work(i):
        try:
            barrier.wait(timeout=10)
            results[i] = fn(i)
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return results


# --------------------------------------------------------------------------- keys

def test_submission_key_is_a_pure_content_hash():
    k = submission_key(["a", "b"], "p")
    assert k == submission_key(("a", "b"), "p") and len(k) == 64 and int(k, 16) >= 0
    assert k != submission_key(["b", "a"], "p")          # order matters
    assert k != submission_key(["a", "b"], "q")          # params matter
    assert submission_key(["a,b"], "p") != submission_key(["a", "b"], "p")  # no concatenation ambiguity
    assert submission_key(["ab"], "p") != submission_key(["a", "b"], "p")
    with pytest.raises(TypeError):
        submission_key("ab", "p")                        # a bare string is not a list of ids
    with pytest.raises(ValueError):
        submission_key([], "p")
    assert L.digest_params({"b": 1, "a": [1, 2]}) == L.digest_params({"a": [1, 2], "b": 1})
    assert L.digest_params({"a": 1}) != L.digest_params({"a": 2})


# --------------------------------------------------------------------------- reserve

def test_reserve_once_then_returns_the_existing_entry(cas_backend):
    first, second = cas_backend.make(), cas_backend.make()
    entry, created_now = first.reserve(key(1), "run-1", 3)
    assert created_now is True
    assert (entry.state, entry.batch_id, entry.run_id, entry.request_count) == (RESERVED, None, "run-1", 3)
    again, created_again = second.reserve(key(1), "run-2", 3)
    assert created_again is False
    assert again == entry                                  # same document: owner, times, run
    assert second.get(key(1)) == entry
    assert first.get(key(2)) is None
    with pytest.raises(ValueError):
        first.get("not-a-key")


def test_concurrent_reserve_from_8_threads_has_exactly_one_winner(cas_backend):
    keys = [key(f"t{i}") for i in range(4)]

    def work(_):
        ledger = cas_backend.make()
        return [ledger.reserve(k, "run-t", 1) for k in keys]

    results = run_threads(8, work)
    for j, k in enumerate(keys):
        outcomes = [r[j] for r in results]
        assert sum(created for _, created in outcomes) == 1, k
        assert len({e.owner for e, _ in outcomes}) == 1     # everybody sees the winner's entry
        assert cas_backend.make().get(k).owner == outcomes[0][0].owner


_WORKER = r"""
import json, os, sys, time
from transforms.batches.ledger import LocalLedger, LedgerConflict, CREATED
directory, mode, go, keys = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
ledger = LocalLedger(directory)
read = {k: ledger.get(k) for k in keys} if mode == "update" else {}
open(go + "." + str(os.getpid()), "w").close()           # ready
while not os.path.exists(go):
    pass
won = []
for k in keys:
    if mode == "reserve":
        if ledger.reserve(k, "run-p", 1)[1]:
            won.append(k)
    else:
        try:
            ledger.update(read[k], state=CREATED, batch_id="b-" + str(os.getpid()))
            won.append(k)
        except LedgerConflict:
            pass
print(json.dumps(won))
"""


def _race_processes(directory: str, mode: str, keys: List[str], n: int = 2) -> List[List[str]]:
    go = os.path.join(directory, "go")
    env = dict(os.environ, PYTHONPATH=ROOT)
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, directory, mode, go, ",".join(keys)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
             for _ in range(n)]
    deadline = time.monotonic() + 30
    while sum(name.startswith("go.") for name in os.listdir(directory)) < n:
        assert time.monotonic() < deadline, "workers did not start"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.01)
    open(go, "w").close()
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
        outputs.append(json.loads(out))
    return outputs


def test_concurrent_reserve_from_2_processes_has_exactly_one_winner(tmp_path):
    directory = str(tmp_path / "ledger")
    LocalLedger(directory)
    keys = [key(f"p{i}") for i in range(150)]
    a, b = _race_processes(directory, "reserve", keys)
    assert not set(a) & set(b)                              # never two winners
    assert set(a) | set(b) == set(keys)                     # always one
    assert len(a) + len(b) == len(keys)


def test_concurrent_update_from_2_processes_has_exactly_one_winner(tmp_path):
    directory = str(tmp_path / "ledger")
    ledger = LocalLedger(directory)
    keys = [key(f"u{i}") for i in range(150)]
    for k in keys:
        ledger.reserve(k, "run-p", 1)
    a, b = _race_processes(directory, "update", keys)       # both read every entry before the race
    assert not set(a) & set(b) and set(a) | set(b) == set(keys)
    assert {ledger.get(k).revision for k in keys} == {1}


# --------------------------------------------------------------------------- update

def test_update_is_compare_and_swap(cas_backend):
    ledger, other = cas_backend.make(), cas_backend.make()
    entry, _ = ledger.reserve(key(1), "run-1", 2)
    created = ledger.update(entry, state=CREATED, batch_id="msgbatch_1", extra={"manifest": "m-1"})
    assert (created.state, created.batch_id, created.revision, created.extra) == (CREATED, "msgbatch_1", 1,
                                                                                  {"manifest": "m-1"})
    with pytest.raises(LedgerConflict):
        ledger.update(entry, state=FAILED)                  # stale copy: lost the race
    with pytest.raises(LedgerConflict):
        other.touch(entry)
    assert other.get(key(1)) == created
    ended = other.update(other.get(key(1)), state=ENDED)    # a fresh read wins
    assert ledger.get(key(1)) == ended and ended.revision == 2 and ended.batch_id == "msgbatch_1"


def test_concurrent_updates_of_one_read_have_exactly_one_winner(cas_backend):
    entry, _ = cas_backend.make().reserve(key(1), "run-1", 1)

    def work(i):
        try:
            return cas_backend.make().update(entry, extra={"writer": i})
        except LedgerConflict:
            return None

    winners = [r for r in run_threads(8, work) if r is not None]
    assert len(winners) == 1
    assert cas_backend.make().get(key(1)) == winners[0]


def test_update_refuses_illegal_changes(tmp_path):
    ledger = LocalLedger(tmp_path)
    entry, _ = ledger.reserve(key(1), "run-1", 1)
    with pytest.raises(ValueError):
        ledger.update(entry, state=CREATED)                 # created needs a batch_id
    with pytest.raises(ValueError):
        ledger.update(entry, state="done")
    with pytest.raises(TypeError):
        ledger.update(entry, key=key(2))
    with pytest.raises(TypeError):
        ledger.update(entry, revision=7)
    created = ledger.update(entry, state=CREATED, batch_id="b1")
    with pytest.raises(ValueError):
        ledger.update(created, batch_id="b2")               # a recorded batch is never forgotten
    with pytest.raises(ValueError):
        ledger.update(created, state=RESERVED)
    collected = ledger.update(ledger.update(created, state=ENDED), state="collected")
    with pytest.raises(ValueError):
        ledger.update(collected, state=ENDED)
    assert ledger.get(key(1)) == collected


# --------------------------------------------------------------------------- listing, manifests

def test_list_filters_by_run_and_state_and_streams(backend):
    ledger = backend.make()
    a, _ = ledger.reserve(key("a"), "run-1", 1)
    ledger.reserve(key("b"), "run-1", 1)
    ledger.reserve(key("c"), "run-2", 1)
    ledger.record_batch(a, "msgbatch_a")
    listing = ledger.list()
    assert iter(listing) is listing                          # a stream, not a list
    assert {e.key for e in listing} == {key("a"), key("b"), key("c")}
    assert {e.key for e in ledger.list(run_id="run-1")} == {key("a"), key("b")}
    assert {e.key for e in ledger.list(states=CREATED)} == {key("a")}
    assert {e.key for e in ledger.list(run_id="run-1", states=[RESERVED])} == {key("b")}
    assert {e.key for e in ledger.list(states={RESERVED, CREATED}, run_id="run-2")} == {key("c")}
    assert list(ledger.list(run_id="nope")) == []
    with pytest.raises(ValueError):
        list(ledger.list(states="done"))


def test_manifests_round_trip(backend):
    ledger = backend.make()
    assert ledger.read_manifest("run-1") is None
    data = {"run_id": "run-1", "keys": [key(1), key(2)], "mode": "batch", "n": 2, "nested": {"ü": [1.5, None]}}
    ledger.write_manifest("run-1", data)
    ledger.write_manifest("20260101-a/b..c", {"other": True})  # odd run ids stay inside manifests/
    assert backend.make().read_manifest("run-1") == data
    assert backend.make().read_manifest("20260101-a/b..c") == {"other": True}
    ledger.write_manifest("run-1", {"replaced": 1})
    assert ledger.read_manifest("run-1") == {"replaced": 1}
    assert sorted(ledger.manifests()) == ["20260101-a/b..c", "run-1"]
    with pytest.raises(TypeError):
        ledger.write_manifest("run-1", ["not", "an", "object"])


# --------------------------------------------------------------------------- stale reservations

def test_stale_reservation_is_taken_over_once(cas_backend):
    long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    dead = cas_backend.make(clock=clock_at(long_ago))
    old, _ = dead.reserve(key(1), "run-1", 4)
    fresh, _ = dead.reserve(key(2), "run-1", 4)
    dead.update(fresh, state=CREATED, batch_id="b-old")      # an old entry WITH a batch: never taken

    alive = cas_backend.make()                              # default stale_after_s = 15 min
    taken, created_now = alive.reserve(key(1), "run-2", 4)
    assert created_now is True
    assert (taken.state, taken.takeovers, taken.run_id, taken.created_at) == (RESERVED, 1, "run-2", old.created_at)
    assert taken.owner != old.owner and taken.revision == 1
    with pytest.raises(LedgerConflict):
        dead.touch(old)                                     # the old owner learns it lost
    assert alive.reserve(key(1), "run-3", 4) == (taken, False)  # a fresh reservation is not stale
    entry, created_now = alive.reserve(key(2), "run-2", 4)
    assert created_now is False and entry.batch_id == "b-old"
    patient = cas_backend.make(stale_after_s=7200)
    assert patient.is_stale(old) is False and alive.is_stale(old) is True


def test_concurrent_takeover_has_exactly_one_winner(cas_backend):
    long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    cas_backend.make(clock=clock_at(long_ago)).reserve(key(1), "run-1", 1)
    results = run_threads(8, lambda i: cas_backend.make().reserve(key(1), f"run-{i}", 1))
    assert sum(created for _, created in results) == 1
    assert len({e.owner for e, _ in results}) == 1
    assert cas_backend.make().get(key(1)).takeovers == 1


def test_record_batch_after_a_takeover_keeps_one_batch(cas_backend):
    long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    slow = cas_backend.make(clock=clock_at(long_ago))
    mine, _ = slow.reserve(key(1), "run-1", 2)
    other = cas_backend.make()
    theirs, created_now = other.reserve(key(1), "run-1", 2)  # takes over while "slow" is still creating
    assert created_now
    recorded = slow.record_batch(mine, "msgbatch_slow")     # first batch recorded wins
    assert (recorded.batch_id, recorded.owner, recorded.state) == ("msgbatch_slow", mine.owner, CREATED)
    assert slow.record_batch(mine, "msgbatch_slow") == recorded  # idempotent
    with pytest.raises(LedgerConflict):
        other.touch(theirs)                                 # checked before create: no second batch
    with pytest.raises(DuplicateBatch) as info:
        other.record_batch(theirs, "msgbatch_other")        # created anyway: told to cancel it
    assert info.value.existing.batch_id == "msgbatch_slow" and info.value.batch_id == "msgbatch_other"
    assert other.get(key(1)).batch_id == "msgbatch_slow"


def test_failed_entry_without_batch_is_reserved_again(cas_backend):
    backend = cas_backend
    ledger = backend.make()
    entry, _ = ledger.reserve(key(1), "run-1", 1)
    failed = ledger.update(entry, state=FAILED, extra={"error": "invalid_request_error"})
    again, created_now = backend.make().reserve(key(1), "run-2", 1)
    assert created_now and again.state == RESERVED and again.takeovers == 1 and again.owner != failed.owner
    with_batch = ledger.update(ledger.update(again, state=CREATED, batch_id="b1"), state=FAILED)
    assert backend.make().reserve(key(1), "run-3", 1) == (with_batch, False)  # a paid batch is never redone


# --------------------------------------------------------------------------- secrets

def test_entries_hold_only_declared_fields_and_no_secret(backend, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", fake_key("not-a-real-key"))
    ledger = backend.make()
    entry, _ = ledger.reserve(key(1), "run-1", 3, extra={"manifest": "manifests/run-1.json"})
    entry = ledger.record_batch(entry, "msgbatch_1", extra={"pack_keys": 2})
    stored = json.loads(backend.raw(key(1)))
    declared = {f.name for f in dataclasses.fields(LedgerEntry)} - {"generation"}
    assert set(stored) == declared == set(LedgerEntry.SERIALIZED_FIELDS)
    assert LedgerEntry.from_dict(stored) == entry
    text = backend.raw(key(1)).decode().lower()
    assert "sk-ant" not in text and "authorization" not in text and "api_key" not in text
    for bad in ({"headers": {"Authorization": "Bearer abc"}}, {"x-api-key": "k"}, {"note": fake_key("xyz")},
                {"url": "https://user:pw@example.com/v1"}, {"list": ["ok", "Bearer abcdefgh"]}):
        with pytest.raises(LedgerSecretError):
            ledger.update(entry, extra=bad)
        with pytest.raises(LedgerSecretError):
            ledger.write_manifest("run-1", bad)
    assert ledger.get(key(1)) == entry                      # nothing was written
    assert ledger.read_manifest("run-1") is None
    with pytest.raises(LedgerSecretError):
        ledger.reserve(key(2), fake_key("in-a-run-id"), 1)
    assert ledger.get(key(2)) is None


# --------------------------------------------------------------------------- local specifics

def test_local_write_failures_never_leave_a_readable_partial_entry(tmp_path, monkeypatch):
    ledger = LocalLedger(tmp_path / "l")
    entries = tmp_path / "l" / "entries"
    (entries / ".tmp-crashed").write_bytes(b'{"key": "half')  # a writer died mid-write
    real_link, real_replace = os.link, os.replace

    def boom(*a, **k):
        raise OSError(5, "disk on fire")

    monkeypatch.setattr(os, "link", boom)
    with pytest.raises(OSError):
        ledger.reserve(key(1), "run-1", 1)
    assert ledger.get(key(1)) is None and list(ledger.list()) == []
    monkeypatch.setattr(os, "link", real_link)
    entry, created_now = ledger.reserve(key(1), "run-1", 1)
    assert created_now
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        ledger.update(entry, state=CREATED, batch_id="b1")
    monkeypatch.setattr(os, "replace", real_replace)
    assert ledger.get(key(1)) == entry                      # the old document, whole
    assert sorted(p.name for p in entries.iterdir()) == [".tmp-crashed", key(1) + ".json"]  # no new temp left


def test_open_ledger_chooses_the_backend(tmp_path):
    local = open_ledger(str(tmp_path / "new" / "ledger"))
    assert isinstance(local, LocalLedger)
    assert all((tmp_path / "new" / "ledger" / d).is_dir() for d in ("entries", "manifests"))
    assert isinstance(open_ledger(f"file://{tmp_path}/f"), LocalLedger) and (tmp_path / "f" / "entries").is_dir()
    gcs = open_ledger("gs://bucket/some/prefix/", stale_after_s=60)
    assert isinstance(gcs, GcsLedger) and (gcs.bucket_name, gcs.prefix) == ("bucket", "some/prefix/")
    assert gcs.object_name(key(1)) == f"some/prefix/entries/{key(1)}.json" and gcs.stale_after_s == 60
    assert open_ledger("gs://bucket").object_name(key(1)) == f"entries/{key(1)}.json"
    copy = pickle.loads(pickle.dumps(GcsLedger("gs://bucket/p", client=object())))  # Beam pickles DoFns
    assert copy.url == "gs://bucket/p" and copy._client_override is None
    with pytest.raises(ValueError):
        open_ledger("s3://bucket/x")
    with pytest.raises(ValueError):
        open_ledger("gs:///nobucket")


# --------------------------------------------------------------------------- the GCS emulator itself

def test_gcs_client_needs_no_credentials_under_the_emulator(gcs_emulator, monkeypatch):
    from google.auth.credentials import AnonymousCredentials

    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    client = L.storage_client()
    assert isinstance(client._credentials, AnonymousCredentials) and client.project == "local-project"
    assert client._connection.API_BASE_URL == gcs_emulator.url
    assert client.bucket(gcs_emulator.bucket).exists()


@pytest.mark.parametrize("variant", [pytest.param("stock", marks=pytest.mark.xfail(reason=NO_CAS_REASON, strict=True)),
                                     "cas"])
def test_emulator_honours_generation_preconditions(variant, request):
    emu = request.getfixturevalue("gcs_emulator" if variant == "stock" else "gcs_emulator_cas")
    assert honours_generation_preconditions(emu.url)


# --------------------------------------------------------------------------- orphan batches

@pytest.fixture(scope="module")
def anthropic_emu():
    import emulator

    with emulator.running(batch_delay_s=0, seed=1) as emu:
        yield emu


def _requests(ids):
    return [{"custom_id": c, "params": {"model": "claude-haiku-4-5", "max_tokens": 16,
                                        "messages": [{"role": "user", "content": "hi"}]}} for c in ids]


def test_find_batch_by_first_custom_id(anthropic_emu):
    import anthropic

    client = anthropic.Anthropic(api_key="test-key", base_url=anthropic_emu.base_url, max_retries=0)
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    target = client.messages.batches.create(requests=_requests(["cid-x0", "cid-x1"]))
    client.messages.batches.create(requests=_requests(["cid-y0", "cid-y1"]))       # same size, other ids
    client.messages.batches.create(requests=_requests(["cid-z0", "cid-z1", "cid-z2"]))
    deadline = time.monotonic() + 10
    while any(b.processing_status != "ended" for b in client.messages.batches.list()):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    found = list(L.find_batch_by_first_custom_id(client, "cid-x0", before, request_count=2, page_size=1))
    assert [(m.batch_id, m.confirmed, m.request_count) for m in found] == [(target.id, True, 2)]
    assert [m.batch_id for m in L.find_batch_by_first_custom_id(client, "cid-x1", before)] == [target.id]
    assert list(L.find_batch_by_first_custom_id(client, "cid-none", before)) == []
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=1)
    assert list(L.find_batch_by_first_custom_id(client, "cid-x0", later)) == []
    anthropic_emu.configure(batch_delay_s=3600)
    try:
        running = client.messages.batches.create(requests=_requests(["cid-r0", "cid-r1"]))
        unknown = list(L.find_batch_by_first_custom_id(client, "cid-r0", before, request_count=2))
        assert [(m.batch_id, m.confirmed) for m in unknown] == [(running.id, None)]
    finally:
        anthropic_emu.configure(batch_delay_s=0)


def test_requests_file_round_trips_requests_and_packed_records(tmp_path):
    """The requests file written with orjson reads back equal, records' odd values included."""
    import math

    from transforms.batches import lifecycle
    from transforms.records import Record
    from transforms.prompts.requests import Item, Request
    items = (Item("a", "k", "f" * 64, 12, 0, ("fake_system",)), Item("b\u00e9", "k", "e" * 64, 3, 1))
    req = Request("cid-1", "p" * 64, "k", items, "<item id=\"a\">h\u00e9llo</item>", True, 300, 500, 9000, 2)
    records = {"a": Record("a", "k", "t\u00e9xt", {"n": float("nan"), "big": 2 ** 70, "when": None}, ("x",)),
               "b\u00e9": Record("b\u00e9", "k", "t", {})}
    path = str(tmp_path / "r.json.gz")
    lifecycle.write_requests(path, [req], records)
    got, got_records = lifecycle.read_requests(path)
    assert got == [req]
    assert set(got_records) == {"a", "b\u00e9"}
    assert math.isnan(got_records["a"].attrs["n"]) and got_records["a"].attrs["big"] == 2 ** 70
    assert got_records["a"].flags == ("x",) and got_records["b\u00e9"] == records["b\u00e9"]
    lifecycle.write_requests(path, [req], None)
    assert lifecycle.read_requests(path) == ([req], None)
