# The two commands: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= out/sample

.PHONY: run test test-slow stream-demo venv bench clean

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

## Run the whole test suite (under 10 minutes here). The two `slow` tests
## (a fresh venv from the wheel, a real Airflow install) run with `make test-slow`.
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

## Streaming demo: starts the Pub/Sub emulator, publishes the sample, runs the
## streaming job for a while and shows what landed.
stream-demo: $(STAMP)
	$(PY) -m bench.stream_demo

bench: $(STAMP)
	$(PY) -m bench batch --records 100000

clean:
	rm -rf out .pytest_cache
