"""Input, Parquet output, summary and ledger all on gs://, against the GCS emulator."""
from __future__ import annotations

import io

import pyarrow.parquet as pq

from pipeline.run import EXIT_OK, run
from tests.conftest import count_input_rows
from tests.gcs_emulator import DEFAULT_BUCKET, gcs_emulator_cas, storage_emulator_env  # noqa: F401 - fixture

SAMPLE = "samples/emails.jsonl"


def test_batch_job_reads_and_writes_gs(gcs_emulator_cas, emu, api_env):  # noqa: F811 - fixture
    # The precondition-enforcing emulator: the stock one ignores ifGenerationMatch,
    # which the ledger's "create only if absent" relies on (see tests/gcs_emulator.py).
    with storage_emulator_env(gcs_emulator_cas.url):
        _run_on_gs(emu)


def _run_on_gs(emu):
    from transforms.batches.ledger import storage_client
    bucket = storage_client().bucket(DEFAULT_BUCKET)
    with open(SAMPLE, "rb") as f:
        bucket.blob("in/emails.jsonl").upload_from_string(f.read())
    emu.reset()
    out = f"gs://{DEFAULT_BUCKET}/out/run1"
    args = ["--task", "samples/sentiment.yaml", "--input", f"gs://{DEFAULT_BUCKET}/in/*.jsonl",
            "--output", out, "--mode", "packed-batch", "--pack-key-field", "customer_id",
            "--api-base", emu.base_url, "--poll-interval-s", "0.05", "--run-id", "gcs-test",
            "--ledger", f"gs://{DEFAULT_BUCKET}/ledger", "--no_auth"]
    assert run(args) == EXIT_OK

    def rows(prefix):
        found = []
        for blob in bucket.list_blobs(prefix=prefix):
            if blob.name.endswith(".parquet"):
                found += pq.read_table(io.BytesIO(blob.download_as_bytes())).to_pylist()
        return found
    results, dead = rows("out/run1/results/"), rows("out/run1/dead_letter/")
    assert len(results) + len(dead) == count_input_rows(SAMPLE)
    assert len({r["record_id"] for r in results}) == len(results) == 392
    assert bucket.blob("out/run1/summary.json").exists()
    assert any(b.name.startswith("ledger/entries/") for b in bucket.list_blobs(prefix="ledger/"))
    # a rerun of the same job reuses the batch recorded on gs://
    created = emu.stats()["batches_created"]
    assert run(args + ["--overwrite"]) == EXIT_OK
    assert emu.stats()["batches_created"] == created
