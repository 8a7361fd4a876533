"""The API key never leaves the worker's memory.

A recognizable fake key is put where a real one would be (ANTHROPIC_API_KEY,
or the value of the Secret Manager secret named by --api-key-secret), then
every place a key could leak is searched for it:

* the Dataflow job a dry run would submit: the job request (pipeline options
  included), the runner-API graph with every pickled DoFn, coder and window
  function decoded, and every file the job would stage;
* the pickled job settings themselves;
* everything logged (root logger at DEBUG, so the SDK's and httpx's debug
  lines count too) and printed during a real local run against the emulator;
* every file the run wrote: Parquet (raw bytes and decoded rows and schema
  metadata), summary.json, the batch ledger.

The scanner is checked against a positive control (a DoFn that does hold the
key), so "not found" means "not there", not "not looked at properly".
"""
from __future__ import annotations

import base64
import bz2
import json
import logging
import os
import pickle
import re
import uuid
import zlib
from typing import Iterator

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.internal import pickler
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.build import resolve_job
from pipeline.options import ClaudeOptions
from pipeline.run import EXIT_OK, run
from tests.conftest import assert_one_in_one_out, fake_key, read_output
from tests.test_dataflow import DATAFLOW_ARGS, TASK, dry_run

#: Unique per session, so a stray copy from another run can never match.
FAKE_KEY = fake_key(f"NOTAREALKEY-{uuid.uuid4().hex}{uuid.uuid4().hex}-AA")
#: Enough of the key to catch a partly masked copy ("sk-ant-...<tail>").
KEY_TAIL = FAKE_KEY[-40:]
SECRET_NAME = "projects/test-project/secrets/anthropic-key/versions/3"
SAMPLE = "samples/emails.jsonl"

_B64_RUN = re.compile(rb"[A-Za-z0-9+/]{24,}={0,2}")


def decoded_views(data: bytes, depth: int = 0) -> Iterator[bytes]:
    """`data` and everything base64 / bz2 / zlib inside it (Beam pickles DoFns,
    coders and window functions as base64 of bz2- or zlib-compressed pickles,
    inside protos)."""
    yield data
    for decompress, error in ((zlib.decompress, zlib.error), (bz2.decompress, (OSError, ValueError))):
        try:
            yield decompress(data)
        except error:
            pass
    if depth >= 3:
        return
    for match in _B64_RUN.finditer(data):
        run_ = match.group()
        for skip in range(4):  # a proto length prefix may look like base64: try each alignment
            chunk = run_[skip:]
            if not chunk.endswith(b"="):
                chunk = chunk[: len(chunk) - len(chunk) % 4]
            try:
                raw = base64.b64decode(chunk, validate=True)
            except ValueError:
                continue
            yield from decoded_views(raw, depth + 1)


def leaks(data, secret: str = FAKE_KEY) -> bool:
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    needles = (secret.encode(), secret[-40:].encode())
    return any(n in view for view in decoded_views(data) for n in needles)


def assert_clean(data, where: str) -> None:
    assert not leaks(data), f"the API key appears in {where}"


def scan_dry_run(result) -> int:
    """Asserts the key is nowhere in a dry run; returns how many blobs were looked at."""
    assert_clean(json.dumps(result.request), "the Dataflow job request")
    assert_clean(json.dumps(result.options.get_all_options(retain_unknown_options=True), default=str),
                 "the pipeline options")
    assert_clean(result.pipeline.SerializeToString(), "the runner-API graph")
    blobs = 2
    for transform in result.pipeline.components.transforms.values():
        assert_clean(transform.SerializeToString(), f"step {transform.unique_name!r}")
        blobs += 1
    for name, path in result.artifacts.items():
        with open(path, "rb") as f:
            assert_clean(f.read(), f"the staged file {name}")
        blobs += 1
    return blobs


class _HoldsTheKey(beam.DoFn):
    """What must never be written: a DoFn that carries the key to the workers."""

    def __init__(self, key):
        self._key = key

    def process(self, element):
        yield element


def test_the_scanner_finds_a_key_hidden_in_a_pickled_dofn():
    """Positive control: a key inside a DoFn is found in the (base64) graph."""
    options = PipelineOptions(DATAFLOW_ARGS)
    p = beam.Pipeline(options=options)
    _ = p | beam.Create([1]) | "Holds the key" >> beam.ParDo(_HoldsTheKey(FAKE_KEY))
    graph = p.run().job.proto_pipeline
    serialized = graph.SerializeToString()
    assert leaks(serialized)
    step = next(t for t in graph.components.transforms.values() if t.unique_name == "Holds the key")
    assert leaks(step.SerializeToString())
    assert leaks(zlib.compress(pickle.dumps({"k": FAKE_KEY})))          # zlib
    assert leaks(base64.b64encode(zlib.compress(FAKE_KEY.encode())))    # base64(zlib)
    assert leaks(b"\x12\x8c" + base64.b64encode(bz2.compress(FAKE_KEY.encode())))  # base64(bz2) in a proto
    assert leaks(f"...{KEY_TAIL}")                                      # a masked copy
    assert not leaks(fake_key("something-else").encode())


@pytest.mark.parametrize("secret_flag", [False, True], ids=["env-key", "env-key+api-key-secret"])
@pytest.mark.parametrize("mode", ["batch", "sync"])
def test_dataflow_job_carries_no_key(monkeypatch, mode, secret_flag):
    """The key is read on each worker (env or Secret Manager), never at launch."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", FAKE_KEY)
    extra = ["--api-key-secret", SECRET_NAME] if secret_flag else []
    result = dry_run(mode, *extra)
    options = result.request["environment"]["sdkPipelineOptions"]["options"]
    if secret_flag:
        assert options["api_key_secret"] == SECRET_NAME  # the name travels; the value does not
        # ...inside the pickled DoFns too: proof that the scan reads what the workers get
        assert leaks(result.pipeline.SerializeToString(), secret=SECRET_NAME)
    assert leaks(result.pipeline.SerializeToString(), secret="ApiSettings")
    assert scan_dry_run(result) > 10


def test_pickled_job_settings_carry_no_key(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", FAKE_KEY)
    for mode in ("batch", "sync", "packed", "packed-batch"):
        opts = PipelineOptions(["--task", TASK, "--input", SAMPLE, "--output", "/tmp/x", "--mode", mode,
                                "--api-key-secret", SECRET_NAME]).view_as(ClaudeOptions)
        job = resolve_job(opts, None, local=False)
        assert_clean(pickle.dumps(job), f"the pickled Job ({mode})")
        assert_clean(pickler.dumps(job.process), f"the Beam-pickled ProcessSettings ({mode})")
        assert job.process.api.api_key_secret == SECRET_NAME


# ------------------------------------------------------------------- a local run


def _scan_output_tree(root) -> int:
    files = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                assert_clean(f.read(), path)
            if name.endswith(".parquet"):
                table = pq.read_table(path)
                assert_clean(json.dumps(table.to_pylist(), default=str), f"the rows of {path}")
                assert_clean(repr(table.schema.metadata), f"the schema metadata of {path}")
            files += 1
    return files


@pytest.fixture
def key_only_emu(emu):
    """The emulator accepting the fake key and nothing else: a run that succeeds
    proves the key really was used (and so really could have leaked)."""
    emu.reset()
    emu.configure(faults={}, api_keys=[FAKE_KEY])
    yield emu
    emu.configure(api_keys=None)


@pytest.fixture
def everything_logged(caplog):
    """Every logger at DEBUG, including those that set their own level."""
    caplog.set_level(logging.DEBUG)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and logger.level not in (logging.NOTSET, logging.DEBUG):
            caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def _run_and_scan(emu, tmp_path, mode, caplog, capfd, *extra):
    out = tmp_path / "out"
    args = ["--task", TASK, "--input", SAMPLE, "--output", str(out), "--mode", mode,
            "--pack-key-field", "customer_id", "--api-base", emu.base_url,
            "--poll-interval-s", "0.05", "--poll-max-interval-s", "0.2", *extra]
    assert run(args) == EXIT_OK
    results, dead = read_output(str(out))
    assert_one_in_one_out(SAMPLE, results, dead)
    assert results and not any(d["error_type"] == "authentication_error" for d in dead)
    logged = "\n".join(f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert len(caplog.records) > 10, "expected DEBUG logging from the run"
    assert_clean(logged, "the logs")
    printed = capfd.readouterr()
    assert_clean(printed.out, "stdout")
    assert_clean(printed.err, "stderr")
    assert _scan_output_tree(out) >= 3  # results, dead letters, summary.json (and the ledger)
    assert (out / "summary.json").exists()


@pytest.mark.parametrize("mode", ["batch", "sync"])
def test_local_run_with_env_key_leaks_nothing(key_only_emu, tmp_path, monkeypatch, everything_logged,
                                              capfd, mode):
    monkeypatch.setenv("ANTHROPIC_API_KEY", FAKE_KEY)
    _run_and_scan(key_only_emu, tmp_path, mode, everything_logged, capfd)


def test_local_run_with_secret_manager_key_leaks_nothing(key_only_emu, tmp_path, monkeypatch,
                                                         everything_logged, capfd):
    """--api-key-secret: the value comes from Secret Manager (a fake client here)."""
    from google.cloud import secretmanager

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    asked = []

    class _Payload:
        data = f"{FAKE_KEY}\n".encode()

    class _Version:
        payload = _Payload()

    class FakeSecretManager:
        def __init__(self, *a, **kw):
            pass

        def access_secret_version(self, name=None, request=None):
            asked.append(name or (request or {}).get("name"))
            return _Version()

    monkeypatch.setattr(secretmanager, "SecretManagerServiceClient", FakeSecretManager)
    _run_and_scan(key_only_emu, tmp_path, "batch", everything_logged, capfd,
                  "--api-key-secret", SECRET_NAME)
    assert asked and set(asked) == {SECRET_NAME}
