"""Airflow DAG: the nightly Claude job as submit -> collect (example; copy it
into your DAGs folder and edit JOB and the CLAUDE_BEAM_* variables).

    submit   `python -m pipeline ... --lifecycle submit`: reads the input,
             creates the Message Batches, records them in the ledger, exits.
    collect  `python -m pipeline ... --lifecycle collect`, a sensor in
             *reschedule* mode: every poke writes the results of the batches
             that have ended; exit 75 means "some batches are still running",
             so the sensor frees its worker slot and pokes again later.
             Exit 0: every batch collected, summary.json written.

Nobody waits on a batch: no Airflow worker slot and no Dataflow worker sits
idle for the minutes-to-24-hours a Message Batch takes (docs/deploy.md).

Exit codes of `python -m pipeline` (pipeline/run.py):
    0  done                       -> task succeeds / sensor fires
    75 batches still running      -> sensor pokes again later (collect only)
    1  the job failed             -> task fails; Airflow retries it (safe: the
                                     ledger makes a rerun reuse its batches)
    2  bad usage (flag, task file, input) -> fails at once, no retry
    3  the plan is over --max-cost-usd; nothing was sent -> fails at once, no retry
    130 aborted (SIGTERM/Ctrl-C)  -> fails; retried like 1

The DAG file imports nothing of the pipeline (Airflow parses DAG files often
and its workers need not have Beam): it runs the CLI of a separate
installation, CLAUDE_BEAM_PYTHON (a venv with `pip install claude-beam-bulk`).
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import shlex
import subprocess
from typing import List, Optional

try:  # Airflow 3
    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.providers.standard.sensors.python import PythonSensor
    from airflow.sdk import DAG
    from airflow.sdk.exceptions import AirflowFailException
except ImportError:  # Airflow 2.x
    from airflow import DAG
    from airflow.exceptions import AirflowFailException
    from airflow.operators.python import PythonOperator
    from airflow.sensors.python import PythonSensor

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_OVER_BUDGET = 3
EXIT_PENDING = 75
EXIT_ABORTED = 130

#: The job, as `python -m pipeline` flags. {run_date} is filled in by the
#: pipeline from --run-date (the DAG run's logical date): one folder per night,
#: and a rerun of the same night reuses the same run id and batches.
JOB = {
    "--task": os.environ.get("CLAUDE_BEAM_TASK", "gs://my-bucket/tasks/sentiment.yaml"),
    "--input": os.environ.get("CLAUDE_BEAM_INPUT", "gs://my-bucket/in/{run_date}/*.jsonl"),
    "--output": os.environ.get("CLAUDE_BEAM_OUTPUT", "gs://my-bucket/out/sentiment/{run_date}"),
    "--ledger": os.environ.get("CLAUDE_BEAM_LEDGER", "gs://my-bucket/ledger/sentiment/{run_date}"),
    "--mode": "batch",
    "--pack-key-field": "customer_id",
    # the key's *name*; each worker reads the value from Secret Manager
    "--api-key-secret": os.environ.get(
        "CLAUDE_BEAM_API_KEY_SECRET", "projects/my-project/secrets/anthropic-api-key/versions/latest"),
}

#: Python of the installation that runs the job (not Airflow's own).
PYTHON = os.environ.get("CLAUDE_BEAM_PYTHON", "/opt/claude-beam-bulk/venv/bin/python")
#: Beam runner flags. Default: Dataflow. For a small job, CLAUDE_BEAM_RUNNER_ARGS="--runner DirectRunner".
RUNNER_ARGS = shlex.split(os.environ.get(
    "CLAUDE_BEAM_RUNNER_ARGS",
    "--runner DataflowRunner --project my-project --region us-central1 "
    "--temp_location gs://my-bucket/tmp --setup_file /opt/claude-beam-bulk/src/setup.py "
    "--service_account_email claude-beam@my-project.iam.gserviceaccount.com "
    "--max_num_workers 4"))
#: Extra flags, e.g. "--api-base http://127.0.0.1:8787" against an emulator in tests.
EXTRA_ARGS = shlex.split(os.environ.get("CLAUDE_BEAM_EXTRA_ARGS", ""))
#: One submit or collect invocation (a Dataflow job that creates or collects
#: batches takes minutes; a stuck one must not hold the slot forever).
COMMAND_TIMEOUT_S = int(os.environ.get("CLAUDE_BEAM_COMMAND_TIMEOUT_S", str(3 * 3600)))


def build_command(stage: str, run_date: str) -> List[str]:
    """The CLI invocation of one lifecycle stage for one logical date."""
    if stage not in ("submit", "collect"):
        raise ValueError(f"stage must be submit or collect, not {stage!r}")
    cmd = [PYTHON, "-m", "pipeline"]
    for flag, value in JOB.items():
        cmd += [flag, value]
    return cmd + ["--run-date", run_date, "--lifecycle", stage, *RUNNER_ARGS, *EXTRA_ARGS]


def run_stage(stage: str, run_date: str, env: Optional[dict] = None) -> int:
    """Runs one stage; returns its exit code after logging its output."""
    cmd = build_command(stage, run_date)
    log.info("running: %s", shlex.join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                          env=env if env is not None else os.environ.copy())
    for name, text in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        if text.strip():
            log.info("%s of %s:\n%s", name, stage, text[-20000:])
    return proc.returncode


def _raise_for(stage: str, code: int) -> None:
    if code == EXIT_USAGE:
        # a flag, the task file or the input is wrong: retrying cannot help
        raise AirflowFailException(f"{stage}: bad usage (exit 2); fix the DAG's flags or the task file")
    if code == EXIT_OVER_BUDGET:
        # the same input and budget plan the same: retrying cannot help either
        raise AirflowFailException(f"{stage}: over --max-cost-usd (exit 3); nothing was sent")
    raise RuntimeError(f"{stage} failed with exit code {code}")


def submit(ds: str, **_) -> None:
    """Task: create and record the night's batches (idempotent: a retry reuses them)."""
    code = run_stage("submit", ds)
    if code != EXIT_OK:
        _raise_for("submit", code)


def collect(ds: str, **_) -> bool:
    """Sensor poke: True when every batch is collected, False to poke again later."""
    code = run_stage("collect", ds)
    if code == EXIT_OK:
        return True
    if code == EXIT_PENDING:
        log.info("some batches are still running; collecting again later")
        return False
    _raise_for("collect", code)
    return False  # not reached


with DAG(
    dag_id="claude_beam_nightly",
    description="Score the night's records with Claude (Message Batches): submit, then collect",
    schedule="0 1 * * *",                      # 01:00 UTC: batches end well before 09:00
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=dt.timedelta(hours=30),
    default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=10)},
    tags=["claude", "beam"],
) as dag:
    submit_batches = PythonOperator(task_id="submit", python_callable=submit,
                                    execution_timeout=dt.timedelta(seconds=COMMAND_TIMEOUT_S + 600))
    collect_results = PythonSensor(
        task_id="collect",
        python_callable=collect,
        mode="reschedule",                     # frees the worker slot between pokes
        poke_interval=20 * 60,
        exponential_backoff=False,
        timeout=26 * 3600,                     # a batch ends within 24 h (expired otherwise)
    )
    submit_batches >> collect_results
