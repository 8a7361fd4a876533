"""Flex Template entry point (FLEX_TEMPLATE_PYTHON_PY_FILE in deploy/Dockerfile).

The launcher runs `python main.py --<parameter>=<value> ... --runner=DataflowRunner
--project=... --region=... --temp_location=... --setup_file=...`; this is
`python -m pipeline` plus Beam's --no_wait_until_finish: a Flex Template
launcher must exit once the job is submitted, not wait for it to finish."""
import sys

from pipeline.run import main

if __name__ == "__main__":
    main(sys.argv[1:] + ["--no_wait_until_finish"])
