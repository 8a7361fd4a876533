"""Pay once, lose nothing: the ledger across reruns, the submit/collect split,
abort, and a SIGKILL in the middle of a run."""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bench import datagen
from pipeline.run import EXIT_OK, EXIT_PENDING, EXIT_USAGE, run
from tests.conftest import assert_one_in_one_out, read_output
from transforms.batches import ledger as ledger_mod

TASK = "samples/sentiment.yaml"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def emu_reset(emu):
    emu.reset()
    emu.configure(faults={}, batch_delay_s=0.0)
    yield emu
    emu.configure(faults={}, batch_delay_s=0.0)


def _args(emu, data, out, *extra, mode="batch"):
    return ["--task", TASK, "--input", str(data), "--output", str(out), "--mode", mode,
            "--pack-key-field", "customer_id", "--api-base", emu.base_url, "--run-id", "lifecycle-test",
            "--poll-interval-s", "0.05", "--poll-max-interval-s", "0.2", *extra]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "in.jsonl"
    datagen.write_jsonl(str(path), 60, seed=21, customers=5)
    return path


@pytest.mark.parametrize("mode", ["batch", "packed-batch"])
def test_rerun_reuses_batches_and_pays_nothing_twice(emu_reset, api_env, tmp_path, data, mode):
    out = tmp_path / "out"
    assert run(_args(emu_reset, data, out, mode=mode)) == EXIT_OK
    created = emu_reset.stats()["batches_created"]
    assert created >= 1
    # a scheduler's rerun of the same job: same content, same run id
    assert run(_args(emu_reset, data, out, "--overwrite", mode=mode)) == EXIT_OK
    stats = emu_reset.stats()
    assert stats["batches_created"] == created
    assert stats["duplicates_billed"] == 0
    results, dead = read_output(str(out))
    assert_one_in_one_out(str(data), results, dead)
    assert len(results) == 60


def test_submit_then_collect(emu_reset, api_env, tmp_path, data, capsys):
    out = tmp_path / "out"
    emu_reset.configure(batch_delay_s=8.0)
    # collect before any submit: said plainly, exit 2, nothing created
    assert run(_args(emu_reset, data, out, "--lifecycle", "collect")) == EXIT_USAGE
    assert "was never submitted" in capsys.readouterr().err
    assert emu_reset.stats()["batches_created"] == 0
    assert run(_args(emu_reset, data, out, "--lifecycle", "submit")) == EXIT_OK
    assert emu_reset.stats()["batches_created"] == 1
    assert not glob.glob(str(out / "results" / "*.parquet")) or not read_output(str(out))[0]
    # too early: the batch is still running; nothing is lost, collect later
    capsys.readouterr()
    assert run(_args(emu_reset, data, out, "--lifecycle", "collect")) == EXIT_PENDING
    early = capsys.readouterr()
    assert "still running" in early.out and "NO" not in early.out  # pending is not a broken promise
    batch_id = next(ledger_mod.open_ledger(str(out / "_ledger")).list(run_id="lifecycle-test")).batch_id
    deadline = time.monotonic() + 30
    while emu_reset.batch_status(batch_id) != "ended":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert run(_args(emu_reset, data, out, "--lifecycle", "collect")) == EXIT_OK
    results, dead = read_output(str(out))
    assert_one_in_one_out(str(data), results, dead)
    files = sorted(glob.glob(str(out / "results" / "*.parquet")))
    # a second collect writes nothing twice, and says everything was collected
    capsys.readouterr()
    assert run(_args(emu_reset, data, out, "--lifecycle", "collect")) == EXIT_OK
    assert "already collected" in capsys.readouterr().out
    assert sorted(glob.glob(str(out / "results" / "*.parquet"))) == files
    ledger = ledger_mod.open_ledger(str(out / "_ledger"))
    states = [e.state for e in ledger.list(run_id="lifecycle-test")]
    assert states == ["collected"]
    assert emu_reset.stats()["batches_created"] == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["one_in_one_out"] is True


def _spawn(emu, data, out, *extra):
    env = dict(os.environ, ANTHROPIC_API_KEY="test-key-not-a-secret", PYTHONPATH=ROOT)
    return subprocess.Popen([sys.executable, "-m", "pipeline", *_args(emu, data, out, *extra)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for_batch(emu, proc, out, timeout=60):
    """Until the run's batch exists and the ledger has recorded its id."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no batch was created"
        if emu.stats()["batches_created"] >= 1 and os.path.isdir(out / "_ledger"):
            entries = list(ledger_mod.open_ledger(str(out / "_ledger")).list(run_id="lifecycle-test"))
            if entries and entries[0].batch_id:
                return
        time.sleep(0.1)


def test_sigkill_after_create_then_rerun_is_complete_and_paid_once(emu_reset, tmp_path, data):
    out = tmp_path / "out"
    emu_reset.configure(batch_delay_s=4.0)
    proc = _spawn(emu_reset, data, out)
    _wait_for_batch(emu_reset, proc, out)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert not glob.glob(str(out / "results" / "*.parquet"))
    rerun = _spawn(emu_reset, data, out, "--overwrite")
    output, _ = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, output.decode()[-3000:]
    assert emu_reset.stats()["batches_created"] == 1  # no second batch for the same content
    results, dead = read_output(str(out))
    assert_one_in_one_out(str(data), results, dead)
    assert len(results) == 60


def _sigterm_while_the_batch_runs(emu, data, out) -> None:
    """Start the job in its own process, SIGTERM it once its batch exists; it must exit 130."""
    emu.configure(batch_delay_s=30.0)
    proc = _spawn(emu, data, out)
    _wait_for_batch(emu, proc, out)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output.decode()[-3000:]


def test_sigterm_cancels_the_runs_batches(emu_reset, tmp_path, data):
    out = tmp_path / "out"
    _sigterm_while_the_batch_runs(emu_reset, data, out)
    ledger = ledger_mod.open_ledger(str(out / "_ledger"))
    entries = list(ledger.list(run_id="lifecycle-test"))
    assert [e.state for e in entries] == ["cancelled"]
    assert emu_reset.batch_status(entries[0].batch_id) in ("canceling", "ended")


def test_a_rerun_after_an_abort_finishes_the_job_and_pays_once(emu_reset, api_env, tmp_path, data):
    """After Ctrl-C/SIGTERM cancelled the batch, the rerun with the same ledger
    reuses it, resubmits only its cancelled items (once), and ends with every
    record answered; nothing the API answered is sent again."""
    out = tmp_path / "out"
    _sigterm_while_the_batch_runs(emu_reset, data, out)
    emu_reset.configure(batch_delay_s=0.0)
    assert run(_args(emu_reset, data, out, "--overwrite")) == EXIT_OK
    results, dead = read_output(str(out))
    assert_one_in_one_out(str(data), results, dead)
    assert dead == [] and len(results) == 60
    stats = emu_reset.stats()
    assert stats["batches_created"] == 2  # the cancelled one, then one resubmission of its cancelled items
    assert stats["duplicates_billed"] == 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the lost raise, on purpose
def test_a_signal_whose_raise_is_lost_in_an_ignored_callback_is_delivered_again():
    """The handler's _Aborted is ignored when it lands in a __del__ (or a weakref
    callback run by the GC): the signal comes again until the abort is under way."""
    from pipeline.run import _abort_on_signals, _Aborted

    class Dies:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10_000):  # the handler runs in here: its raise is ignored
                pass

    before = signal.getsignal(signal.SIGTERM)
    started = time.monotonic()
    with pytest.raises(_Aborted, match="SIGTERM"):
        with _abort_on_signals():
            Dies()
            while time.monotonic() - started < 10:
                time.sleep(0.01)
    assert time.monotonic() - started < 5
    assert signal.getsignal(signal.SIGTERM) == before  # the handler of before is back


@pytest.mark.parametrize("stage", ["submit", "collect"])
def test_submit_and_collect_refuse_the_short_lived_bundled_emulator(tmp_path, data, capsys, stage):
    """A split lifecycle against `--api-base local` could never meet (each command
    has its own emulator): refused before anything starts, with the way that works."""
    code = run(["--task", TASK, "--input", str(data), "--output", str(tmp_path / "out"), "--mode", "batch",
                "--api-base", "local", "--lifecycle", stage])
    err = capsys.readouterr().err
    assert code == 2 and "python -m emulator --port 8787" in err and "LOCAL EMULATOR" not in err


def test_a_ledger_naming_a_batch_the_api_forgot_gives_rows_not_a_crash(emu_reset, api_env, tmp_path, data):
    """A rerun whose ledger names a batch the API no longer knows (404) ends with
    one dead letter per record, `batch_not_found`, and pays for nothing again."""
    out = tmp_path / "out"
    assert run(_args(emu_reset, data, out)) == EXIT_OK
    emu_reset.reset()  # the API forgets every batch (deleted, another workspace, past 29 days)
    assert run(_args(emu_reset, data, out, "--overwrite")) == EXIT_OK
    results, dead = read_output(str(out))
    assert_one_in_one_out(str(data), results, dead)
    assert results == [] and {d["error_type"] for d in dead} == {"batch_not_found"}
    assert all("does not know" in d["error_message"] for d in dead)
    stats = emu_reset.stats()
    assert stats["batches_created"] == 0 and stats["batch_requests_received"] == 0
