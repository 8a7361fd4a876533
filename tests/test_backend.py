"""No silent emulator: a job with no key and no --api-base refuses to start,
and rows answered by the bundled emulator say so in their provenance."""
from __future__ import annotations

import os

import pytest

from tests.conftest import read_output
from pipeline import backend
from pipeline.plan import plan_command
from pipeline.run import EXIT_OK, EXIT_USAGE, run

TASK = "samples/sentiment.yaml"
SAMPLE = "samples/emails.jsonl"


@pytest.fixture
def no_key(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)


@pytest.mark.parametrize("mode", ["sync", "batch"])
def test_no_key_and_no_api_base_exits_2_before_anything(no_key, tmp_path, capsys, mode):
    out = tmp_path / "out"
    code = run(["--task", TASK, "--input", SAMPLE, "--output", str(out), "--mode", mode])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert "ANTHROPIC_API_KEY" in err and "--api-base local" in err and "--api-key-secret" in err
    assert "LOCAL EMULATOR" not in err
    assert not out.exists()


def test_plan_without_key_or_api_base_exits_2(no_key, capsys):
    assert plan_command(["--task", TASK, "--input", SAMPLE]) == EXIT_USAGE
    assert "--api-base local" in capsys.readouterr().err


@pytest.mark.parametrize("given, written", [
    (None, "https://api.anthropic.com"),
    ("https://gateway.example.com/anthropic/", "https://gateway.example.com/anthropic"),
    ("https://user:s3cret@gateway.example.com:8443/v", "https://gateway.example.com:8443/v"),
    ("http://127.0.0.1:8787?token=abc", "http://127.0.0.1:8787"),
])
def test_provenance_names_the_endpoint_without_credentials(given, written):
    assert backend.provenance(given, local=False) == written


def test_rows_answered_by_the_bundled_emulator_say_so(no_key, tmp_path, capsys):
    small = tmp_path / "in.jsonl"
    with open(SAMPLE, encoding="utf-8") as f:
        lines = [line for line in f if '"em-0000' in line][:12]
    small.write_text("".join(lines), encoding="utf-8")
    out = tmp_path / "out"
    assert run(["--task", TASK, "--input", str(small), "--output", str(out), "--mode", "sync",
                "--api-base", "local"]) == EXIT_OK
    assert "LOCAL EMULATOR" in capsys.readouterr().err
    results, dead = read_output(str(out))
    assert len(results) + len(dead) == len(lines)
    assert results and {r["api_base"] for r in results} == {"local-emulator"}


def test_a_real_endpoint_is_written_as_given(emu, api_env, tmp_path):
    small = tmp_path / "in.jsonl"
    with open(SAMPLE, encoding="utf-8") as f:
        small.write_text(f.readline(), encoding="utf-8")
    out = tmp_path / "out"
    assert run(["--task", TASK, "--input", str(small), "--output", str(out), "--mode", "sync",
                "--api-base", emu.base_url]) == EXIT_OK
    results, dead = read_output(str(out))
    assert [r["api_base"] for r in results] == [emu.base_url] and dead == []


def test_a_local_batch_run_leaves_no_customer_text_in_the_temp_dir(no_key, tmp_path, monkeypatch):
    """The bundled emulator's temporary ledger (full prompts) is removed when the run ends."""
    import tempfile
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    small = tmp_path / "in.jsonl"
    with open(SAMPLE, encoding="utf-8") as f:
        small.write_text("".join(f.readlines()[:5]), encoding="utf-8")
    assert run(["--task", TASK, "--input", str(small), "--output", str(tmp_path / "out"), "--mode", "batch",
                "--api-base", "local", "--poll-interval-s", "0.05"]) == EXIT_OK
    leftovers = [p.name for p in tmp.iterdir() if p.name.startswith("claude-ledger-")]
    assert leftovers == []
    texts = [line.split('"text": "', 1)[1][:40] for line in small.read_text(encoding="utf-8").splitlines()]
    for path in tmp.rglob("*"):
        if path.is_file():
            content = path.read_bytes().decode("utf-8", "replace")
            assert not any(t in content for t in texts), path
