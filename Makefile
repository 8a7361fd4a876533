# The two commands: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= out/sample
# pytest-xdist workers: 3 on 2 cores, because most tests wait on emulators,
# subprocesses and pip rather than compute (6.5 min here vs 9 with 2).
TEST_WORKERS ?= 3

.PHONY: run test test-fast test-slow system-deps mutants stream-demo venv bench clean

$(STAMP): requirements.txt requirements-dev.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

## Run the sample job (400 emails, batch mode) against the embedded emulator.
run: $(STAMP)
	$(PY) -m pipeline --task samples/sentiment.yaml --input samples/emails.jsonl \
	  --output $(OUT) --overwrite --pack-key-field customer_id --mode batch --api-base local

## Redis and Chromium for the tests: installed when missing (as root), else
## stops with the command that installs them.
system-deps:
	bash .ci/system-deps

## Run the whole test suite, the two `slow` tests included (a fresh venv from
## the wheel, a real Airflow install), on $(TEST_WORKERS) pytest workers, because most tests
## wait on emulators and subprocesses. Under 10 minutes on 2 cores.
test: $(STAMP) system-deps
	$(PY) -m pytest -q -n $(TEST_WORKERS) tests

## The suite without the two pip-installing tests, for quick iterations.
test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow" tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

## Plant each known defect (tests/mutants.py) in a scratch copy, one at a
## time, and show which test catches it; fails if one survives or no longer
## applies. About 2 minutes; the working tree is never modified.
mutants: $(STAMP)
	$(PY) tests/mutants.py

## Streaming demo: starts the Pub/Sub emulator, publishes the sample, runs the
## streaming job for a while and shows what landed.
stream-demo: $(STAMP)
	$(PY) -m bench.stream_demo

bench: $(STAMP)
	$(PY) -m bench batch --records 100000

clean:
	rm -rf out .pytest_cache
