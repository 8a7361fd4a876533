#!/usr/bin/env bash
# Cloud Scheduler example: the nightly job as two Cloud Run jobs (submit,
# collect) that run `python -m pipeline` from the Flex Template image and
# launch Dataflow jobs. NEEDS A GCP PROJECT: nothing here runs in this
# repository's tests except a syntax check and a check of JOB_FLAGS against
# the real options parser (tests/test_dataflow.py).
#
#   01:00 UTC  submit   reads the input, creates and records the batches, exits
#   every 20 min, 01:10-08:50 UTC
#              collect  writes what has ended; exit 75 ("batches still running")
#                       is mapped to success: the next tick collects the rest
#
# Why Cloud Run jobs and not Scheduler -> flexTemplates.launch: the CLI's exit
# codes (0/1/2/3/75) only exist where the CLI runs, and `python -m pipeline` waits
# for its Dataflow job and then writes summary.json (a Flex Template launcher
# must not wait). Usage: edit the variables, then `bash deploy/cloud_scheduler.sh`.
set -euo pipefail

PROJECT=my-project
REGION=us-central1
BUCKET=my-bucket
IMAGE="${REGION}-docker.pkg.dev/${PROJECT}/dataflow/claude-beam-bulk:0.1.0"   # deploy/cloudbuild.yaml
RUNNER_SA="claude-beam-launcher@${PROJECT}.iam.gserviceaccount.com"           # runs the CLI (Cloud Run)
WORKER_SA="claude-beam@${PROJECT}.iam.gserviceaccount.com"                    # Dataflow workers
SCHEDULER_SA="claude-beam-scheduler@${PROJECT}.iam.gserviceaccount.com"       # may run the Cloud Run jobs

# --- the job: flags of `python -m pipeline` (checked by tests/test_dataflow.py) ---
JOB_FLAGS=(
  --task "gs://${BUCKET}/tasks/sentiment.yaml"
  --input "gs://${BUCKET}/in/{run_date}/*.jsonl"
  --output "gs://${BUCKET}/out/sentiment/{run_date}"
  --ledger "gs://${BUCKET}/ledger/sentiment/{run_date}"
  --mode batch
  --pack-key-field customer_id
  --api-key-secret "projects/${PROJECT}/secrets/anthropic-api-key/versions/latest"
  --runner DataflowRunner
  --project "${PROJECT}"
  --region "${REGION}"
  --temp_location "gs://${BUCKET}/tmp"
  --setup_file /template/setup.py
  --service_account_email "${WORKER_SA}"
  --max_num_workers 4
)

# What a Cloud Run job of one stage runs (`sh -c SCRIPT sh JOB_FLAGS...`):
# today's date in UTC as --run-date (RUN_DATE=YYYY-MM-DD overrides it, for a
# night whose batches outlived the collect window:
#   gcloud run jobs execute claude-beam-collect --update-env-vars RUN_DATE=2026-11-25),
# and exit 75 ("batches still running") turned into success, since the next
# scheduled collect picks them up.
stage_script() {  # $1: submit | collect
  printf '%s' "python -m pipeline \"\$@\" --run-date \"\${RUN_DATE:-\$(date -u +%F)}\" --lifecycle $1; rc=\$?;"
  printf '%s' " if [ \"\$rc\" -eq 75 ]; then echo 'batches still running: the next run collects them'; exit 0; fi;"
  printf '%s' " exit \"\$rc\""
}
# --- end of the job ---

[ "${BASH_SOURCE[0]}" = "$0" ] || return 0   # sourced (by the tests): stop here

# One Cloud Run job per stage, on the Flex Template image; its entrypoint (the
# launcher) is replaced by `sh`. gcloud's ^|^ prefix makes "|" the list separator.
for STAGE in submit collect; do
  ARGS="-c|$(stage_script "${STAGE}")|sh"
  for flag in "${JOB_FLAGS[@]}"; do ARGS+="|${flag}"; done
  gcloud run jobs deploy "claude-beam-${STAGE}" \
    --project "${PROJECT}" --region "${REGION}" --image "${IMAGE}" \
    --service-account "${RUNNER_SA}" \
    --command sh --args="^|^${ARGS}" \
    --task-timeout 6h --max-retries 1 --memory 2Gi --cpu 1
done

# The scheduler's identity may run the two jobs, nothing else.
for STAGE in submit collect; do
  gcloud run jobs add-iam-policy-binding "claude-beam-${STAGE}" --project "${PROJECT}" --region "${REGION}" \
    --member "serviceAccount:${SCHEDULER_SA}" --role roles/run.invoker
done

RUN_URL="https://run.googleapis.com/v2/projects/${PROJECT}/locations/${REGION}/jobs"
gcloud scheduler jobs create http claude-beam-submit --project "${PROJECT}" --location "${REGION}" \
  --schedule "0 1 * * *" --time-zone UTC \
  --uri "${RUN_URL}/claude-beam-submit:run" --http-method POST \
  --oauth-service-account-email "${SCHEDULER_SA}"
gcloud scheduler jobs create http claude-beam-collect --project "${PROJECT}" --location "${REGION}" \
  --schedule "10/20 1-8 * * *" --time-zone UTC \
  --uri "${RUN_URL}/claude-beam-collect:run" --http-method POST \
  --oauth-service-account-email "${SCHEDULER_SA}"
