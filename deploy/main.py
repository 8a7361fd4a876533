"""Flex Template entry point (FLEX_TEMPLATE_PYTHON_PY_FILE in deploy/Dockerfile).

The launcher runs `python main.py --<parameter>=<value> ... --runner=DataflowRunner
--project=... --region=... --temp_location=... --setup_file=...`; this is
`python -m pipeline` plus Beam's --no_wait_until_finish: a Flex Template
launcher must exit once the job is submitted, not wait for it to finish.

So a Flex launch runs --lifecycle all only. submit records the run's manifest
(what collect counts the records against) after its job ends, and collect
marks its batches collected after its job ends: a launcher that does not wait
does neither, and a later collect would write the same batches' rows again.
Run submit/collect with the CLI (deploy/cloud_scheduler.sh, deploy/airflow_dag.py)."""
import sys

from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.options import ClaudeOptions
from pipeline.run import main
from pipeline.run import EXIT_USAGE


def _lifecycle(argv):
    return PipelineOptions(argv).view_as(ClaudeOptions).lifecycle


if __name__ == "__main__":
    argv = sys.argv[1:]
    if _lifecycle(argv) != "all":
        print("error: a Flex Template launch runs --lifecycle all only (the launcher does not wait "
              "for the job, so submit would write no manifest and collect would not mark its "
              "batches collected); run submit and collect with `python -m pipeline` "
              "(docs/deploy.md)", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    sys.exit(main(argv + ["--no_wait_until_finish"]))
